//! Reloading the config (SPEC §12): read the file, refuse what only a restart may change,
//! bind what is new, build the next snapshot beside the current one and swap it in.

use std::sync::Arc;
use std::time::SystemTime;

use crate::config;
use crate::observe::metrics::ResultLabel;

use super::run::{bind_listener, spawn_listener, start_upstreams, Control};
use super::{Gateway, ReloadRecord, Snapshot};

impl Gateway {
    /// Reads the config file again and swaps it in (SPEC §12). On any problem — the file
    /// is invalid, changes what only a restart can, or names an address that cannot be
    /// bound — nothing changes and the problems are returned, one message each.
    pub async fn reload(self: &Arc<Gateway>) -> Result<Vec<String>, Vec<String>> {
        let mut control = self.control.lock().await;
        let result = self.reload_locked(&mut control).await;
        let ok = result.is_ok();
        let messages = match &result {
            Ok(messages) | Err(messages) => messages.clone(),
        };
        self.observer
            .metrics
            .reloads
            .get_or_create(&ResultLabel {
                result: if ok { "success" } else { "failure" },
            })
            .inc();
        if ok {
            tracing::info!(changes = ?messages, "config reloaded");
        } else {
            tracing::error!(errors = ?messages, "config reload refused; the old config keeps serving");
        }
        if let Ok(mut last) = self.last_reload.lock() {
            *last = Some(ReloadRecord {
                at: SystemTime::now(),
                ok,
                messages,
            });
        }
        result
    }

    async fn reload_locked(
        self: &Arc<Gateway>,
        control: &mut Control,
    ) -> Result<Vec<String>, Vec<String>> {
        let old = self.current();
        let Some(path) = old.config.source.clone() else {
            return Err(vec!["baton was not started from a config file".to_owned()]);
        };
        let read = path.clone();
        let config = tokio::task::spawn_blocking(move || config::load(&read))
            .await
            .map_err(|err| vec![format!("reading the config failed: {err}")])?
            .map_err(|errors| errors.iter().map(ToString::to_string).collect::<Vec<_>>())?;
        let file = path.display();
        let mut refused = Vec::new();
        if config.admin.listen != old.config.admin.listen {
            refused.push(format!("{file}: `admin.listen` cannot change on reload; restart baton to move the admin server"));
        }
        if config.store != old.config.store {
            refused.push(format!("{file}: `[store]` cannot change on reload; restart baton to change where idempotency keys are kept"));
        }
        if config.log.level != old.config.log.level {
            refused.push(format!(
                "{file}: `log.level` cannot change on reload; restart baton to change it"
            ));
        }
        if !refused.is_empty() {
            return Err(refused);
        }

        // Bind what is new before anything changes, so that a taken address refuses the
        // whole reload.
        let mut added = Vec::new();
        for listener in &config.listeners {
            let kept = control
                .listeners
                .iter()
                .any(|l| l.state.name == listener.name && l.listen == listener.listen);
            if !kept {
                let socket = bind_listener(listener).map_err(|err| vec![err.to_string()])?;
                added.push((listener.clone(), socket));
            }
        }
        self.observer
            .access_log
            .reopen(&config.log.access)
            .map_err(|err| vec![err.to_string()])?;

        let snapshot = Arc::new(Snapshot::new(config, Some(&old)));
        let fresh: Vec<usize> = (0..snapshot.upstreams.len())
            .filter(|&i| {
                let upstream = &snapshot.upstreams[i];
                !old.upstream(&upstream.name)
                    .is_some_and(|u| Arc::ptr_eq(u, upstream))
            })
            .collect();
        if let Err(errors) = start_upstreams(&snapshot, &fresh, &mut control.tasks).await {
            // Nothing else changed yet; the log goes back to where it was.
            let _ = self.observer.access_log.reopen(&old.config.log.access);
            return Err(errors);
        }

        self.current.store(snapshot.clone());
        let mut messages = Vec::new();

        // Retire what the new config no longer has.
        for upstream in &old.upstreams {
            let successor = snapshot.upstream(&upstream.name);
            if successor.is_some_and(|u| Arc::ptr_eq(u, upstream)) {
                continue;
            }
            upstream.retire();
            for endpoint in &upstream.members().endpoints {
                let taken_over = successor.is_some_and(|s| {
                    s.members()
                        .endpoints
                        .iter()
                        .any(|e| Arc::ptr_eq(e, endpoint))
                });
                if !taken_over {
                    endpoint.retire();
                }
            }
            if successor.is_none() {
                messages.push(format!("upstream {} removed", upstream.name));
            }
        }
        for &index in &fresh {
            let name = &snapshot.upstreams[index].name;
            let verb = if old.upstream(name).is_some() {
                "changed"
            } else {
                "added"
            };
            messages.push(format!("upstream {name} {verb}"));
        }
        let mut kept = Vec::new();
        for running in control.listeners.drain(..) {
            match snapshot
                .config
                .listeners
                .iter()
                .find(|l| l.name == running.state.name && l.listen == running.listen)
            {
                Some(listener) => {
                    running.state.update(listener.clone());
                    kept.push(running);
                }
                None => {
                    messages.push(format!(
                        "listener {} on {} removed",
                        running.state.name, running.addr
                    ));
                    running.retire.send_replace(true);
                }
            }
        }
        control.listeners = kept;
        for (listener, socket) in added {
            let running = spawn_listener(self, listener, socket, &mut control.tasks)
                .map_err(|err| vec![err.to_string()])?;
            messages.push(format!(
                "listener {} on {} added",
                running.state.name, running.addr
            ));
            control.listeners.push(running);
        }
        self.set_listener_addrs(control);
        // Finished tasks of retired upstreams and listeners.
        while control.tasks.try_join_next().is_some() {}
        messages.push(format!(
            "{} listener{}, {} route{}, {} upstream{}",
            snapshot.config.listeners.len(),
            plural(snapshot.config.listeners.len()),
            snapshot.config.routes.len(),
            plural(snapshot.config.routes.len()),
            snapshot.config.upstreams.len(),
            plural(snapshot.config.upstreams.len()),
        ));
        Ok(messages)
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}
