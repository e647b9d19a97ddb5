//! A tiny authoritative DNS server for tests: answers A queries for the names it is given,
//! with the TTL it is given, on a UDP port of 127.0.0.1. Records can change while it runs.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::net::UdpSocket;

type Records = Arc<Mutex<HashMap<String, (Vec<Ipv4Addr>, u32)>>>;

pub struct DnsServer {
    pub addr: SocketAddr,
    records: Records,
    queries: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const TYPE_A: u16 = 1;
const CLASS_IN: u16 = 1;
const NXDOMAIN: u8 = 3;
const FORMERR: u8 = 1;

impl DnsServer {
    pub async fn start() -> DnsServer {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let records: Records = Arc::default();
        let queries: Arc<Mutex<Vec<String>>> = Arc::default();
        let (served, asked) = (records.clone(), queries.clone());
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                if let Some(reply) = answer(&buf[..n], &served, &asked) {
                    let _ = socket.send_to(&reply, from).await;
                }
            }
        });
        DnsServer {
            addr,
            records,
            queries,
            task,
        }
    }

    /// Sets the A records of `name`.
    pub fn set(&self, name: &str, addresses: &[Ipv4Addr], ttl: u32) {
        self.records
            .lock()
            .unwrap()
            .insert(name.to_ascii_lowercase(), (addresses.to_vec(), ttl));
    }

    /// Names asked for so far.
    pub fn queries(&self) -> usize {
        self.queries.lock().unwrap().len()
    }

    /// Stops answering (the socket closes).
    pub fn stop(&self) {
        self.task.abort();
    }
}

/// The reply to one query; `None` when it is not a query at all.
fn answer(query: &[u8], records: &Records, queries: &Mutex<Vec<String>>) -> Option<Vec<u8>> {
    if query.len() < 12 || query[2] & 0x80 != 0 {
        return None;
    }
    let mut reply = query[..2].to_vec();
    // Read the question: labels, then type and class.
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = *query.get(at)? as usize;
        at += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(query.get(at..at + len)?).to_ascii_lowercase());
        at += len;
    }
    let qtype = u16::from_be_bytes([*query.get(at)?, *query.get(at + 1)?]);
    let question = query.get(12..at + 4)?;
    let name = labels.join(".");
    queries.lock().unwrap().push(name.clone());
    let found = records.lock().unwrap().get(&name).cloned();
    let (rcode, answers) = match (&found, qtype) {
        (None, _) => (NXDOMAIN, Vec::new()),
        (Some((addresses, ttl)), TYPE_A) => (0, addresses.iter().map(|a| (*a, *ttl)).collect()),
        (Some(_), _) => (0, Vec::new()),
    };
    let rcode = if question.len() < 5 { FORMERR } else { rcode };
    // Flags: a response, recursion desired and available, with rcode.
    reply.extend_from_slice(&[0x81, 0x80 | rcode]);
    reply.extend_from_slice(&1u16.to_be_bytes());
    reply.extend_from_slice(&(answers.len() as u16).to_be_bytes());
    reply.extend_from_slice(&[0, 0, 0, 0]);
    reply.extend_from_slice(question);
    for (address, ttl) in answers {
        reply.extend_from_slice(&[0xc0, 0x0c]); // the name, as a pointer to the question
        reply.extend_from_slice(&TYPE_A.to_be_bytes());
        reply.extend_from_slice(&CLASS_IN.to_be_bytes());
        reply.extend_from_slice(&ttl.to_be_bytes());
        reply.extend_from_slice(&4u16.to_be_bytes());
        reply.extend_from_slice(&address.octets());
    }
    Some(reply)
}
