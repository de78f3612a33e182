//! A small W3C WebDriver client: Debian's `chromedriver` driving headless `chromium`,
//! spoken to over reqwest. It starts its own chromedriver on a free loopback port with a
//! throwaway profile, and stops it (and so the browser) on drop. Waits poll the page
//! until a deadline; a wait that fails saves a screenshot and the page source under the
//! target directory and names them in the panic.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use base64::Engine as _;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

/// How long a wait on the page may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(60);
/// The key WebDriver names an element reference by.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Where failures go: the target directory's `tmp/browser`.
fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    dir
}

/// The first executable `name` on PATH, or the path in `env` when set.
fn program(env: &str, name: &str, package: &str) -> PathBuf {
    let found = match std::env::var_os(env) {
        Some(path) => Some(PathBuf::from(path)),
        None => std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file()),
    };
    found.filter(|p| p.is_file()).unwrap_or_else(|| {
        panic!(
            "`{name}` is not installed: the admin console's browser tests need Debian's \
                 `{package}` (apt-get install -y chromium chromium-driver; .ci/run installs it), \
                 or {env} set to its path"
        )
    })
}

/// A headless Chromium session behind its own chromedriver.
pub struct Chrome {
    driver: Child,
    http: reqwest::Client,
    /// `http://127.0.0.1:<port>/session/<id>`
    session: String,
    /// Whether the session has ended (the browser quit).
    quit: bool,
    log: PathBuf,
    _profile: tempfile::TempDir,
}

impl Chrome {
    /// Starts chromedriver and opens a headless session with a fresh profile.
    pub async fn start() -> Self {
        let chromedriver = program("NEXUS_CHROMEDRIVER", "chromedriver", "chromium-driver");
        let chromium = program("NEXUS_CHROMIUM", "chromium", "chromium");
        // chromedriver's log lives with the profile; a failure copies it out.
        let profile = tempfile::tempdir().unwrap_or_else(|e| panic!("profile dir: {e}"));
        let log = profile.path().join("chromedriver.log");
        // Port 0: chromedriver picks a free port and says which, so no other run can take it.
        let mut driver = Command::new(&chromedriver)
            .arg("--port=0")
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", chromedriver.display()));
        let Some(stdout) = driver.stdout.take() else {
            panic!("chromedriver's stdout is not piped");
        };
        let mut lines = BufReader::new(stdout).lines();
        let port = tokio::time::timeout(DEADLINE, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(rest) = line.split("started successfully on port ").nth(1) {
                    return rest.trim_end_matches('.').parse::<u16>().ok();
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("chromedriver did not start: {}", tail(&log)));
        // Drained so chromedriver never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

        let mut args = vec![
            "--headless=new".to_owned(),
            "--disable-gpu".to_owned(),
            "--no-first-run".to_owned(),
            "--window-size=1280,900".to_owned(),
            format!(
                "--user-data-dir={}",
                profile.path().join("chromium").display()
            ),
        ];
        if running_as_root() {
            // Chromium refuses to start as root with its sandbox on (it cannot drop to
            // an unprivileged user); CI and this container run the tests as root.
            args.push("--no-sandbox".to_owned());
        }
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args},
        }}});
        let r = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .unwrap_or_else(|e| panic!("chromedriver at {base}: {e}"));
        let body: Value = r.json().await.unwrap_or_default();
        let Some(id) = body["value"]["sessionId"].as_str() else {
            panic!(
                "chromium did not start under chromedriver: {body}\n{}",
                tail(&log)
            );
        };
        Self {
            session: format!("{base}/session/{id}"),
            quit: false,
            log,
            driver,
            http,
            _profile: profile,
        }
    }

    /// One WebDriver command; `Err` carries the W3C error code and message.
    async fn command(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let mut req = self.http.request(method, format!("{}{path}", self.session));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let r = req.send().await.map_err(|e| format!("chromedriver: {e}"))?;
        let ok = r.status().is_success();
        let body: Value = r.json().await.map_err(|e| format!("chromedriver: {e}"))?;
        if ok {
            Ok(body["value"].clone())
        } else {
            Err(format!(
                "{}: {}",
                body["value"]["error"].as_str().unwrap_or("error"),
                body["value"]["message"].as_str().unwrap_or_default()
            ))
        }
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value, String> {
        self.command(reqwest::Method::POST, path, Some(body)).await
    }

    async fn get(&self, path: &str) -> Result<Value, String> {
        self.command(reqwest::Method::GET, path, None).await
    }

    /// Loads `url` and returns once the page has loaded.
    pub async fn goto(&self, url: &str) {
        if let Err(e) = self.post("/url", json!({ "url": url })).await {
            self.fail(&format!("loading {url}: {e}")).await;
        }
    }

    /// The address of the page shown.
    pub async fn url(&self) -> String {
        match self.get("/url").await {
            Ok(v) => v.as_str().unwrap_or_default().to_owned(),
            Err(e) => self.fail(&format!("reading the URL: {e}")).await,
        }
    }

    /// The first element matching `css` now, if any.
    pub async fn find(&self, css: &str) -> Option<Element<'_>> {
        let v = self
            .post("/element", json!({"using": "css selector", "value": css}))
            .await
            .ok()?;
        let id = v[ELEMENT].as_str()?.to_owned();
        Some(Element { chrome: self, id })
    }

    /// Waits until an element matches `css` and, when given, its text contains `text`.
    pub async fn wait_for(&self, css: &str, text: Option<&str>) -> Element<'_> {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            if let Some(el) = self.find(css).await {
                match text {
                    None => return el,
                    Some(t) if el.text().await.contains(t) => return el,
                    Some(_) => {}
                }
            }
            if tokio::time::Instant::now() > deadline {
                let want = text
                    .map(|t| format!(" with text {t:?}"))
                    .unwrap_or_default();
                self.fail(&format!("no element {css}{want}")).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Reloads `url` until an element matches `css`: for server-rendered pages whose
    /// data arrives after the first load.
    pub async fn reload_until(&self, url: &str, css: &str) -> Element<'_> {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            self.goto(url).await;
            if let Some(el) = self.find(css).await {
                return el;
            }
            if tokio::time::Instant::now() > deadline {
                self.fail(&format!("no element {css} at {url}")).await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Runs `script` (a function body) in the page and returns its value.
    pub async fn script(&self, script: &str) -> Value {
        match self
            .post("/execute/sync", json!({"script": script, "args": []}))
            .await
        {
            Ok(v) => v,
            Err(e) => self.fail(&format!("script {script:?}: {e}")).await,
        }
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&self) -> Result<Vec<u8>, String> {
        let v = self.get("/screenshot").await?;
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or_default())
            .map_err(|e| format!("screenshot: {e}"))
    }

    /// Lays the page out `width` CSS pixels wide (`mobile` as a phone does) and as tall
    /// as its content, then returns a PNG of all of it.
    pub async fn full_page(&self, width: u32, mobile: bool) -> Vec<u8> {
        let metrics = |height: u64| {
            json!({"cmd": "Emulation.setDeviceMetricsOverride", "params": {
                "width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile,
            }})
        };
        let cdp = "/goog/cdp/execute";
        if let Err(e) = self.post(cdp, metrics(800)).await {
            self.fail(&format!("emulating a {width} px screen: {e}"))
                .await;
        }
        let height = self
            .script("return Math.ceil(document.body.getBoundingClientRect().height);")
            .await
            .as_u64()
            .unwrap_or(800);
        if let Err(e) = self.post(cdp, metrics(height)).await {
            self.fail(&format!("emulating a {width}x{height} screen: {e}"))
                .await;
        }
        let png = match self.screenshot().await {
            Ok(png) => png,
            Err(e) => self.fail(&e).await,
        };
        let clear = json!({"cmd": "Emulation.clearDeviceMetricsOverride", "params": {}});
        if let Err(e) = self.post(cdp, clear).await {
            self.fail(&format!("ending the emulation: {e}")).await;
        }
        png
    }

    /// Saves a screenshot and the page source, then panics saying `what` and where they are.
    pub async fn fail(&self, what: &str) -> ! {
        let dir = artifacts();
        let stamp = nexus_common::now_ms();
        let png = dir.join(format!("failure-{stamp}.png"));
        let html = dir.join(format!("failure-{stamp}.html"));
        let log = dir.join(format!("failure-{stamp}-chromedriver.log"));
        let saved_log = std::fs::copy(&self.log, &log)
            .map(drop)
            .map_err(|e| e.to_string());
        let url = self.get("/url").await.unwrap_or_default();
        let saved_png = match self.screenshot().await {
            Ok(bytes) => std::fs::write(&png, bytes).map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        let source = self
            .get("/source")
            .await
            .map(|v| v.as_str().unwrap_or_default().to_owned());
        let saved_html = source.and_then(|s| std::fs::write(&html, s).map_err(|e| e.to_string()));
        let saved = |path: &Path, r: Result<(), String>| match r {
            Ok(()) => path.display().to_string(),
            Err(e) => format!("(not saved: {e})"),
        };
        panic!(
            "in the browser, at {url}: {what}\n  screenshot: {}\n  page source: {}\n  \
             chromedriver's log: {}",
            saved(&png, saved_png),
            saved(&html, saved_html),
            saved(&log, saved_log)
        );
    }

    /// Ends the session (the browser quits); drop stops chromedriver.
    pub async fn quit(mut self) {
        if self
            .command(reqwest::Method::DELETE, "", None)
            .await
            .is_ok()
        {
            self.quit = true;
        }
    }

    /// `DELETE` of the session without a runtime, for a drop during a panic:
    /// chromedriver leaves the browser running when it is killed, so the session
    /// must end first.
    fn quit_blocking(&self) {
        use std::io::{Read as _, Write as _};
        let Some((addr, path)) = self
            .session
            .strip_prefix("http://")
            .and_then(|rest| rest.split_once('/'))
        else {
            return;
        };
        let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
            return;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        let request = format!(
            "DELETE /{path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        if stream.write_all(request.as_bytes()).is_ok() {
            // chromedriver answers once the browser has quit.
            let _ = stream.read_to_end(&mut Vec::new());
        }
    }
}

impl Drop for Chrome {
    fn drop(&mut self) {
        if !self.quit {
            self.quit_blocking();
        }
        let _ = self.driver.start_kill();
    }
}

/// The end of chromedriver's log, for a panic.
fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    // /proc/self belongs to the process's effective user.
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// An element of the page shown.
pub struct Element<'a> {
    chrome: &'a Chrome,
    id: String,
}

impl Element<'_> {
    /// Its rendered text.
    pub async fn text(&self) -> String {
        self.chrome
            .get(&format!("/element/{}/text", self.id))
            .await
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    /// Clicks it as a user would (it must be visible and not covered).
    pub async fn click(&self) {
        if let Err(e) = self
            .chrome
            .post(&format!("/element/{}/click", self.id), json!({}))
            .await
        {
            self.chrome.fail(&format!("clicking: {e}")).await;
        }
    }

    /// Types `text` into it.
    pub async fn type_text(&self, text: &str) {
        if let Err(e) = self
            .chrome
            .post(
                &format!("/element/{}/value", self.id),
                json!({ "text": text }),
            )
            .await
        {
            self.chrome.fail(&format!("typing: {e}")).await;
        }
    }
}
