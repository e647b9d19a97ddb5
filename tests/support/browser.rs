//! Headless Chromium driven over the DevTools protocol, for what only a browser shows: a
//! page's scripts running and the page updating itself.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

use super::TempDir;

pub struct Browser {
    child: Child,
    socket: WebSocket<TcpStream>,
    next_id: u64,
    _profile: TempDir,
}

impl Browser {
    /// Starts Chromium with one blank page and connects to that page.
    pub fn start(width: u32, height: u32) -> Browser {
        let profile = TempDir::new();
        let mut child = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--hide-scrollbars",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                &format!("--window-size={width},{height}"),
                &format!("--user-data-dir={}", profile.0.display()),
                "about:blank",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Its own process group: Chromium starts many processes, and all must end.
            .process_group(0)
            .spawn()
            .expect("chromium runs (apt-get install chromium)");
        let stderr = child.stderr.take().unwrap();
        let (found, port) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    let _ = found.send(url.to_owned());
                }
            }
        });
        let browser_url = match port.recv_timeout(Duration::from_secs(30)) {
            Ok(url) => url,
            Err(_) => {
                kill_group(&mut child);
                panic!("chromium did not open its DevTools port");
            }
        };
        // ws://127.0.0.1:PORT/devtools/browser/ID → the page's socket, from /json/list.
        let host = browser_url
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .unwrap()
            .to_owned();
        let list = http_get(&host, "/json/list");
        let targets: Value = serde_json::from_str(&list).expect("/json/list is JSON");
        let page = targets
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == "page")
            .expect("a page target");
        let url = page["webSocketDebuggerUrl"].as_str().unwrap();
        let stream = TcpStream::connect(&host).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let (socket, _) = tungstenite::client(url, stream).expect("DevTools websocket");
        Browser {
            child,
            socket,
            next_id: 1,
            _profile: profile,
        }
    }

    /// Sends one DevTools command and waits for its result.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let message = json!({ "id": id, "method": method, "params": params });
        self.socket
            .send(Message::text(message.to_string()))
            .expect("send to DevTools");
        loop {
            let reply = self.socket.read().expect("read from DevTools");
            let Message::Text(text) = reply else { continue };
            let value: Value = serde_json::from_str(text.as_str()).unwrap();
            if value["id"] == id {
                assert!(value.get("error").is_none(), "{method} failed: {value}");
                return value["result"].clone();
            }
        }
    }

    pub fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url }));
    }

    /// Evaluates a JavaScript expression in the page; its value.
    pub fn eval(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true }),
        );
        result["result"]["value"].clone()
    }

    /// Waits until `expression` is true in the page; false if it never was within `limit`.
    pub fn wait_for(&mut self, expression: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.eval(expression) == Value::Bool(true) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// A PNG of the whole page, below the window's bottom too.
    pub fn screenshot(&mut self) -> Vec<u8> {
        let metrics = self.call("Page.getLayoutMetrics", json!({}));
        let size = &metrics["cssContentSize"];
        let clip = json!({
            "x": 0, "y": 0, "scale": 1,
            "width": size["width"], "height": size["height"],
        });
        let result = self.call(
            "Page.captureScreenshot",
            json!({ "format": "png", "captureBeyondViewport": true, "clip": clip }),
        );
        data_encoding::BASE64
            .decode(result["data"].as_str().unwrap().as_bytes())
            .expect("base64 PNG")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        kill_group(&mut self.child);
    }
}

/// Ends Chromium and every process it started (its process group).
fn kill_group(child: &mut Child) {
    let group = format!("-{}", child.id());
    let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
    let _ = child.wait();
}

/// A plain HTTP/1.1 GET on loopback; the body.
fn http_get(host: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(host).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    // The DevTools server keeps the connection open: read by Content-Length.
    let mut response = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let read = stream.read(&mut chunk).unwrap();
        assert!(read > 0, "DevTools closed the connection early");
        response.extend_from_slice(&chunk[..read]);
        let text = String::from_utf8_lossy(&response);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .expect("a Content-Length");
            if body.len() >= length {
                return body[..length].to_owned();
            }
        }
    }
}
