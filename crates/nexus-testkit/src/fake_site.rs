//! A fake web site on loopback for `fetch_url`: any axum router (or a few fixed
//! pages), served on one or more loopback addresses at once, with a log of
//! every request and the address it arrived on — so a test can show that a
//! refused URL never reached the site.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex},
};

use axum::{
    Router,
    extract::Request,
    http::header,
    middleware::{self, Next},
    response::IntoResponse,
    routing::get,
};

/// One request the site received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    /// The local address it arrived on.
    pub on: IpAddr,
    /// Path and query.
    pub path: String,
}

/// The running site. Dropping it does not stop the server; tests end with the runtime.
#[derive(Clone)]
pub struct FakeSite {
    addrs: Vec<SocketAddr>,
    log: Arc<Mutex<Vec<Hit>>>,
}

impl FakeSite {
    /// Serves `router` on 127.0.0.1 only.
    pub async fn start(router: Router) -> Self {
        Self::start_on(router, &[IpAddr::V4(Ipv4Addr::LOCALHOST)]).await
    }

    /// Serves fixed pages: (path, content type, body).
    pub async fn pages(pages: &[(&str, &str, &str)]) -> Self {
        let mut router = Router::new();
        for (path, content_type, body) in pages {
            let (content_type, body) = ((*content_type).to_owned(), (*body).to_owned());
            router = router.route(
                path,
                get(move || async move { ([(header::CONTENT_TYPE, content_type)], body) }),
            );
        }
        Self::start(router).await
    }

    /// Serves `router` on each of `ips` (loopback addresses), on the same port
    /// where it is free, so one site answers under several addresses.
    pub async fn start_on(router: Router, ips: &[IpAddr]) -> Self {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut addrs: Vec<SocketAddr> = Vec::new();
        for ip in ips {
            let port = addrs.first().map_or(0, |a| a.port());
            let listener = match tokio::net::TcpListener::bind((*ip, port)).await {
                Ok(l) => l,
                Err(_) => tokio::net::TcpListener::bind((*ip, 0))
                    .await
                    .unwrap_or_else(|e| panic!("bind fake site on {ip}: {e}")),
            };
            let addr = listener
                .local_addr()
                .unwrap_or_else(|e| panic!("fake site address: {e}"));
            let on = addr.ip();
            let log = log.clone();
            let app =
                router
                    .clone()
                    .layer(middleware::from_fn(move |request: Request, next: Next| {
                        let log = log.clone();
                        async move {
                            let path = request
                                .uri()
                                .path_and_query()
                                .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
                            if let Ok(mut l) = log.lock() {
                                l.push(Hit { on, path });
                            }
                            next.run(request).await.into_response()
                        }
                    }));
            tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
            addrs.push(addr);
        }
        Self { addrs, log }
    }

    /// The address on `ip`.
    pub fn addr_on(&self, ip: IpAddr) -> SocketAddr {
        *self
            .addrs
            .iter()
            .find(|a| a.ip() == ip)
            .unwrap_or_else(|| panic!("the fake site does not listen on {ip}"))
    }

    /// `http://<first address><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addrs[0])
    }

    /// `http://<address on ip><path>`.
    pub fn url_on(&self, ip: IpAddr, path: &str) -> String {
        format!("http://{}{path}", self.addr_on(ip))
    }

    /// Every request so far.
    pub fn hits(&self) -> Vec<Hit> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Requests that arrived on `ip`.
    pub fn hits_on(&self, ip: IpAddr) -> usize {
        self.hits().iter().filter(|h| h.on == ip).count()
    }
}
