//! The front-panel logic: pure state machine from status snapshots and key presses to LCD
//! lines and actions. No I/O, no clock: time is passed in.
//!
//! - **Status screen**: cycles every [`CYCLE_MS`] through hostname + IP, phones and calls,
//!   trunks, and the newest alert (when there is one). In survival mode the trunk page reads
//!   "SURVIVAL MODE", comes first, is shown at once when survival starts, and every other
//!   page carries a `!` in its top-right corner. Up/Down flip pages by hand.
//! - **OK** opens the menu: Network, Alerts, Unban last, Reboot, Factory reset, Back.
//!   Dangerous items ask for confirmation; Factory reset first needs OK held for 2 s (a long
//!   press), then a confirmation. **Back** goes one level up; a long Back goes straight to
//!   the status screen, and so does [`IDLE_TIMEOUT_MS`] without a key.
//! - The alert LED is on while unacknowledged alerts exist.
//!
//! Lines are at most `cols` characters (longer text is cut, alerts are word-wrapped), and
//! there are always exactly `rows` of them; the LCD driver pads and maps non-ASCII.

use crate::buttons::{Key, KeyEvent};
use crate::Millis;

/// How long each status page stays up.
pub const CYCLE_MS: Millis = 4_000;
/// Without a key press for this long, the panel returns to the status screen.
pub const IDLE_TIMEOUT_MS: Millis = 60_000;
/// How long a feedback message ("Unbanned ...") stays up.
pub const MESSAGE_MS: Millis = 3_000;
/// Most alerts listed on the Alerts screen.
pub const MAX_LISTED_ALERTS: usize = 32;
/// Most DNS servers listed on the Network screen.
const MAX_LISTED_DNS: usize = 3;

/// What the daemon knows, handed to the panel on every update.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PanelStatus {
    /// The box's hostname.
    pub hostname: String,
    /// The address phones should use (shown on the first page).
    pub ip: String,
    /// Registered phones.
    pub registered: usize,
    /// Calls in progress.
    pub active_calls: usize,
    /// Trunks currently registered / healthy.
    pub trunks_up: usize,
    /// Trunks configured.
    pub trunks: usize,
    /// Survival mode: no trunk reachable, local calls only.
    pub survival: bool,
    /// Text of the newest alert, acknowledged or not.
    pub newest_alert: Option<String>,
    /// Recent alert texts, newest first, for the Alerts screen (may be empty).
    pub recent_alerts: Vec<String>,
    /// Alerts not yet acknowledged.
    pub alerts_unacked: usize,
    /// The most recently banned source address.
    pub last_ban: Option<String>,
    /// The uplink configuration.
    pub network: NetworkInfo,
    /// Age of the newest good backup in seconds (`None`: never backed up).
    pub last_backup_age_secs: Option<u64>,
    /// The clock: `Some(true)` synchronised, `Some(false)` not (a page of its own, as a
    /// warning), `None` when the box does not synchronise it.
    pub time_synchronised: Option<bool>,
}

/// How the uplink address is configured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum NetworkMode {
    /// Address from DHCP.
    #[default]
    Dhcp,
    /// Fixed address.
    Static,
}

/// The uplink's current configuration and lease.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkInfo {
    /// DHCP or static.
    pub mode: NetworkMode,
    /// Current address with prefix, e.g. "192.168.1.20/24" (empty: none).
    pub address: String,
    /// Default gateway (empty: none).
    pub gateway: String,
    /// DNS servers.
    pub dns: Vec<String>,
}

/// A network configuration chosen on the panel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkSetting {
    /// Use DHCP.
    Dhcp,
    /// Keep the current lease as a fixed configuration.
    Static {
        /// Address with prefix.
        address: String,
        /// Default gateway.
        gateway: String,
        /// DNS servers.
        dns: Vec<String>,
    },
}

/// Something the admin asked for on the panel; the daemon carries it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PanelAction {
    /// Acknowledge all alerts.
    AckAlerts,
    /// Lift the ban on this address (the one shown on the confirmation screen).
    UnbanLast(String),
    /// Apply a network configuration.
    SetNetwork(NetworkSetting),
    /// Reboot the box.
    Reboot,
    /// Erase configuration and data, then reboot.
    FactoryReset,
}

/// Menu entries, in display order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MenuItem {
    Network,
    Alerts,
    Unban,
    Reboot,
    FactoryReset,
    Back,
}

const MENU: [MenuItem; 6] = [
    MenuItem::Network,
    MenuItem::Alerts,
    MenuItem::Unban,
    MenuItem::Reboot,
    MenuItem::FactoryReset,
    MenuItem::Back,
];

impl MenuItem {
    fn label(self) -> &'static str {
        match self {
            MenuItem::Network => "Network",
            MenuItem::Alerts => "Alerts",
            MenuItem::Unban => "Unban last",
            MenuItem::Reboot => "Reboot",
            MenuItem::FactoryReset => "Factory reset",
            MenuItem::Back => "Back",
        }
    }

    fn index(self) -> usize {
        MENU.iter().position(|&m| m == self).unwrap_or(0)
    }
}

/// A backup older than this gets a warning page of its own (two days).
const STALE_BACKUP_SECS: u64 = 2 * 86_400;

/// "25 min ago", "3 h ago", "4 days ago".
fn backup_age(age: u64) -> String {
    match age {
        0..=5_399 => format!("{} min ago", age / 60),
        5_400..=172_799 => format!("{} h ago", age / 3_600),
        _ => format!("{} days ago", age / 86_400),
    }
}

/// Pages of the status screen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Page {
    Host,
    Phones,
    Trunks,
    Backup,
    Time,
    Alert,
}

/// Questions that need an explicit OK.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Confirm {
    Network(NetworkSetting),
    Unban(String),
    Reboot,
    FactoryReset,
}

/// What the panel shows.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Screen {
    /// The cycling status pages; the page is `offset` plus one per [`CYCLE_MS`] since `origin`.
    Status {
        origin: Millis,
        offset: usize,
    },
    Menu {
        selected: usize,
        top: usize,
    },
    Network {
        top: usize,
    },
    Alerts {
        top: usize,
    },
    /// "Hold OK for 2 s" before the factory-reset confirmation.
    FactoryArm,
    Confirm(Confirm),
    /// Feedback shown until `until` or the next key, then `then`.
    Message {
        lines: Vec<String>,
        until: Millis,
        then: Box<Screen>,
    },
}

/// The front-panel state machine.
#[derive(Debug, Clone)]
pub struct Panel {
    cols: usize,
    rows: usize,
    status: PanelStatus,
    has_status: bool,
    screen: Screen,
    now: Millis,
    last_key: Millis,
}

impl Panel {
    /// A panel for a `cols` x `rows` display, on the status screen.
    pub fn new(cols: u8, rows: u8) -> Self {
        Self {
            cols: usize::from(cols.max(1)),
            rows: usize::from(rows.max(1)),
            status: PanelStatus::default(),
            has_status: false,
            screen: Screen::Status {
                origin: 0,
                offset: 0,
            },
            now: 0,
            last_key: 0,
        }
    }

    /// Takes a fresh status snapshot; also advances timers (page cycle, idle timeout).
    pub fn update(&mut self, now: Millis, status: &PanelStatus) {
        let survival_started = status.survival && !self.status.survival;
        if !self.has_status {
            // The cycle starts with the first real status.
            self.now = now;
            self.last_key = now;
            self.screen = self.status_screen();
        }
        self.status = status.clone();
        self.status.recent_alerts.truncate(MAX_LISTED_ALERTS);
        self.has_status = true;
        self.tick(now);
        if survival_started && matches!(self.screen, Screen::Status { .. }) {
            self.screen = Screen::Status {
                origin: now,
                offset: 0,
            };
        }
    }

    /// Handles one key press; returns the action the admin confirmed, if any.
    pub fn key(&mut self, now: Millis, event: KeyEvent) -> Option<PanelAction> {
        self.tick(now);
        self.last_key = now;
        if event.key == Key::Back && event.long {
            self.screen = self.status_screen();
            return None;
        }
        let (next, action) = self.next_screen(event);
        self.screen = next;
        action
    }

    /// The lines to show now: exactly `rows` lines of at most `cols` characters.
    pub fn lines(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .render()
            .into_iter()
            .take(self.rows)
            .map(|line| truncate(&line, self.cols))
            .collect();
        lines.resize(self.rows, String::new());
        lines
    }

    /// Whether the alert LED should be lit.
    pub fn alert_led(&self) -> bool {
        self.status.alerts_unacked > 0
    }

    /// Whether the status screen (not a menu) is showing.
    pub fn on_status_screen(&self) -> bool {
        matches!(self.screen, Screen::Status { .. })
    }

    /// Advances time: expires messages and returns to status after the idle timeout.
    fn tick(&mut self, now: Millis) {
        if now < self.now {
            // The wall clock went back (NTP at boot): restart the timers from here.
            self.last_key = now;
            match &mut self.screen {
                Screen::Status { origin, .. } => *origin = now,
                Screen::Message { until, .. } => *until = now,
                _ => {}
            }
        }
        self.now = now;
        if let Screen::Message { until, then, .. } = &self.screen {
            if now >= *until {
                self.screen = (**then).clone();
            }
        }
        let idle = now.saturating_sub(self.last_key) >= IDLE_TIMEOUT_MS;
        if idle && !self.on_status_screen() {
            self.screen = self.status_screen();
        }
    }

    fn status_screen(&self) -> Screen {
        Screen::Status {
            origin: self.now,
            offset: 0,
        }
    }

    fn menu_at(&self, item: MenuItem) -> Screen {
        let selected = item.index();
        Screen::Menu {
            selected,
            top: selected.saturating_sub(self.rows - 1),
        }
    }

    fn message(&self, lines: &[&str], duration: Millis, then: Screen) -> Screen {
        Screen::Message {
            lines: lines.iter().map(|l| (*l).to_string()).collect(),
            until: self.now.saturating_add(duration),
            then: Box::new(then),
        }
    }

    /// The status pages in cycle order.
    fn pages(&self) -> Vec<Page> {
        let mut pages = if self.status.survival {
            vec![Page::Trunks, Page::Host, Page::Phones]
        } else {
            vec![Page::Host, Page::Phones, Page::Trunks]
        };
        if self.status.newest_alert.is_some() {
            pages.push(Page::Alert);
        }
        // A recent backup shows on the host page (when there is room); a missing or old
        // one gets a page of its own, as a warning.
        if self
            .status
            .last_backup_age_secs
            .is_none_or(|a| a > STALE_BACKUP_SECS)
        {
            pages.push(Page::Backup);
        }
        if self.status.time_synchronised == Some(false) {
            pages.push(Page::Time);
        }
        pages
    }

    fn page_index(&self, origin: Millis, offset: usize) -> usize {
        let steps = self.now.saturating_sub(origin) / CYCLE_MS;
        let len = self.pages().len();
        let steps = usize::try_from(steps % len as u64).unwrap_or(0);
        (offset % len + steps) % len
    }

    /// The screen after `event`, and the action it triggers.
    fn next_screen(&self, event: KeyEvent) -> (Screen, Option<PanelAction>) {
        let stay = (self.screen.clone(), None);
        match &self.screen {
            Screen::Status { origin, offset } => {
                let len = self.pages().len();
                let current = self.page_index(*origin, *offset);
                let flip = |offset| Screen::Status {
                    origin: self.now,
                    offset,
                };
                match event.key {
                    Key::Ok => (self.menu_at(MenuItem::Network), None),
                    Key::Down => (flip((current + 1) % len), None),
                    Key::Up => (flip((current + len - 1) % len), None),
                    Key::Back => (flip(0), None),
                }
            }
            Screen::Menu { selected, top } => match event.key {
                Key::Up | Key::Down => {
                    let (selected, top) = step_selection(
                        *selected,
                        *top,
                        event.key == Key::Down,
                        MENU.len(),
                        self.rows,
                    );
                    (Screen::Menu { selected, top }, None)
                }
                Key::Back => (self.status_screen(), None),
                Key::Ok => self.open(MENU[*selected % MENU.len()], event.long),
            },
            Screen::Network { top } => match event.key {
                Key::Up | Key::Down => {
                    let len = self.network_lines().len();
                    let top = scroll(*top, event.key == Key::Down, len, self.rows);
                    (Screen::Network { top }, None)
                }
                Key::Back => (self.menu_at(MenuItem::Network), None),
                Key::Ok => {
                    let net = &self.status.network;
                    match net.mode {
                        NetworkMode::Static => (
                            Screen::Confirm(Confirm::Network(NetworkSetting::Dhcp)),
                            None,
                        ),
                        NetworkMode::Dhcp if net.address.is_empty() => (
                            self.message(
                                &["No DHCP lease", "to keep"],
                                MESSAGE_MS,
                                self.screen.clone(),
                            ),
                            None,
                        ),
                        NetworkMode::Dhcp => (
                            Screen::Confirm(Confirm::Network(NetworkSetting::Static {
                                address: net.address.clone(),
                                gateway: net.gateway.clone(),
                                dns: net.dns.clone(),
                            })),
                            None,
                        ),
                    }
                }
            },
            Screen::Alerts { top } => match event.key {
                Key::Up | Key::Down => {
                    let len = self.alert_lines().len();
                    let visible = self.rows.saturating_sub(1).max(1);
                    let top = scroll(*top, event.key == Key::Down, len, visible);
                    (Screen::Alerts { top }, None)
                }
                Key::Back => (self.menu_at(MenuItem::Alerts), None),
                Key::Ok if self.status.alerts_unacked > 0 => (
                    self.message(
                        &["Alerts", "acknowledged"],
                        MESSAGE_MS,
                        self.menu_at(MenuItem::Alerts),
                    ),
                    Some(PanelAction::AckAlerts),
                ),
                Key::Ok => (
                    self.message(&["No new alerts"], MESSAGE_MS, self.screen.clone()),
                    None,
                ),
            },
            Screen::FactoryArm => match event.key {
                Key::Ok if event.long => (Screen::Confirm(Confirm::FactoryReset), None),
                Key::Back => (self.menu_at(MenuItem::FactoryReset), None),
                _ => stay,
            },
            Screen::Confirm(confirm) => match event.key {
                Key::Ok => self.confirmed(confirm),
                Key::Back => {
                    let back = match confirm {
                        Confirm::Network(_) => Screen::Network { top: 0 },
                        Confirm::Unban(_) => self.menu_at(MenuItem::Unban),
                        Confirm::Reboot => self.menu_at(MenuItem::Reboot),
                        Confirm::FactoryReset => self.menu_at(MenuItem::FactoryReset),
                    };
                    (back, None)
                }
                Key::Up | Key::Down => stay,
            },
            Screen::Message { then, .. } => ((**then).clone(), None),
        }
    }

    /// OK on a menu item.
    fn open(&self, item: MenuItem, long: bool) -> (Screen, Option<PanelAction>) {
        let screen = match item {
            MenuItem::Network => Screen::Network { top: 0 },
            MenuItem::Alerts => Screen::Alerts { top: 0 },
            MenuItem::Unban => match &self.status.last_ban {
                Some(addr) => Screen::Confirm(Confirm::Unban(addr.clone())),
                None => self.message(&["Unban", "No recent ban"], MESSAGE_MS, self.menu_at(item)),
            },
            MenuItem::Reboot => Screen::Confirm(Confirm::Reboot),
            MenuItem::FactoryReset if long => Screen::Confirm(Confirm::FactoryReset),
            MenuItem::FactoryReset => Screen::FactoryArm,
            MenuItem::Back => self.status_screen(),
        };
        (screen, None)
    }

    /// OK on a confirmation screen.
    fn confirmed(&self, confirm: &Confirm) -> (Screen, Option<PanelAction>) {
        match confirm {
            Confirm::Network(setting) => {
                let text = match setting {
                    NetworkSetting::Dhcp => "Using DHCP",
                    NetworkSetting::Static { .. } => "IP now static",
                };
                (
                    self.message(
                        &["Network", text],
                        MESSAGE_MS,
                        self.menu_at(MenuItem::Network),
                    ),
                    Some(PanelAction::SetNetwork(setting.clone())),
                )
            }
            Confirm::Unban(addr) => (
                self.message(
                    &["Unbanned", addr],
                    MESSAGE_MS,
                    self.menu_at(MenuItem::Unban),
                ),
                Some(PanelAction::UnbanLast(addr.clone())),
            ),
            Confirm::Reboot => (
                self.message(&["Rebooting..."], IDLE_TIMEOUT_MS, self.status_screen()),
                Some(PanelAction::Reboot),
            ),
            Confirm::FactoryReset => (
                self.message(
                    &["Factory reset", "Rebooting..."],
                    IDLE_TIMEOUT_MS,
                    self.status_screen(),
                ),
                Some(PanelAction::FactoryReset),
            ),
        }
    }

    /// Untruncated lines of the current screen.
    fn render(&self) -> Vec<String> {
        match &self.screen {
            Screen::Status { origin, offset } => self.render_status(*origin, *offset),
            Screen::Menu { selected, top } => MENU
                .iter()
                .enumerate()
                .skip(*top)
                .take(self.rows)
                .map(|(i, item)| {
                    let cursor = if i == *selected { '>' } else { ' ' };
                    format!("{cursor} {}", item.label())
                })
                .collect(),
            Screen::Network { top } => self
                .network_lines()
                .into_iter()
                .skip(*top)
                .take(self.rows)
                .collect(),
            Screen::Alerts { top } => {
                let header = match self.status.alerts_unacked {
                    0 => "Alerts: none new".to_string(),
                    n => format!("Alerts: {n} new"),
                };
                let visible = self.rows.saturating_sub(1);
                std::iter::once(header)
                    .chain(self.alert_lines().into_iter().skip(*top).take(visible))
                    .collect()
            }
            Screen::FactoryArm => {
                if self.rows >= 4 {
                    lines(&[
                        "Factory reset",
                        "Hold OK for 2 s",
                        "to continue",
                        "Back: cancel",
                    ])
                } else {
                    lines(&["Factory reset", "Hold OK for 2 s"])
                }
            }
            Screen::Confirm(confirm) => self.render_confirm(confirm),
            Screen::Message { lines, .. } => lines.clone(),
        }
    }

    fn render_status(&self, origin: Millis, offset: usize) -> Vec<String> {
        if !self.has_status {
            return lines(&["Outpost", "Starting..."]);
        }
        let s = &self.status;
        let page = self.pages()[self.page_index(origin, offset)];
        let mut out = match page {
            Page::Host => {
                let host = if s.hostname.is_empty() {
                    "Outpost"
                } else {
                    &s.hostname
                };
                let ip = if s.ip.is_empty() { "No address" } else { &s.ip };
                let mut v = lines(&[host, ip]);
                if let Some(age) = s.last_backup_age_secs.filter(|_| self.rows >= 3) {
                    v.push(format!("Backup {}", backup_age(age)));
                }
                v
            }
            Page::Phones => vec![
                format!("Registered: {}", s.registered),
                format!("Active calls: {}", s.active_calls),
            ],
            Page::Trunks if s.survival => vec![
                "SURVIVAL MODE".to_string(),
                format!("Trunks: {}/{} up", s.trunks_up, s.trunks),
                "Local calls only".to_string(),
            ],
            Page::Trunks if s.trunks == 0 => lines(&["No trunks", "Local calls only"]),
            Page::Trunks => vec![format!("Trunks: {}/{} up", s.trunks_up, s.trunks)],
            Page::Time => lines(&["Clock NOT SYNCED", "NTP: no answer"]),
            Page::Backup => match s.last_backup_age_secs {
                None => lines(&["Backup: NEVER", "outpostctl backup"]),
                Some(age) => vec!["Backup: OLD".to_string(), backup_age(age)],
            },
            Page::Alert => {
                let header = match s.alerts_unacked {
                    0 => "Last alert".to_string(),
                    n => format!("ALERT ({n} new)"),
                };
                let text = s.newest_alert.as_deref().unwrap_or("");
                let mut v = vec![header];
                v.extend(wrap(text, self.cols, self.rows.saturating_sub(1)));
                v
            }
        };
        if s.survival && page != Page::Trunks && self.cols > 1 {
            if let Some(first) = out.first_mut() {
                let width = self.cols - 1;
                *first = format!("{:<width$}!", truncate(first, width));
            }
        }
        out
    }

    fn render_confirm(&self, confirm: &Confirm) -> Vec<String> {
        let (question, short, detail) = match confirm {
            Confirm::Network(NetworkSetting::Dhcp) => ("Switch to DHCP?", "DHCP?", String::new()),
            Confirm::Network(NetworkSetting::Static { address, .. }) => {
                ("Make IP static?", "Static?", address.clone())
            }
            Confirm::Unban(addr) => ("Unban address?", "Unban?", addr.clone()),
            Confirm::Reboot => ("Reboot now?", "Reboot?", String::new()),
            Confirm::FactoryReset => ("Factory reset?", "Erase?", "ERASES ALL DATA".to_string()),
        };
        let hint = "OK=yes Back=no".to_string();
        if self.rows >= 3 {
            let mut v = vec![question.to_string(), detail];
            v.resize(self.rows - 1, String::new());
            v.push(hint);
            v
        } else if detail.is_empty() {
            vec![question.to_string(), hint]
        } else {
            vec![detail, format!("{short} OK=yes")]
        }
    }

    fn network_lines(&self) -> Vec<String> {
        let net = &self.status.network;
        let or_dash = |s: &str| {
            if s.is_empty() {
                "-".to_string()
            } else {
                s.to_string()
            }
        };
        let mode = match net.mode {
            NetworkMode::Dhcp => "DHCP",
            NetworkMode::Static => "static",
        };
        let mut v = vec![
            format!("Network: {mode}"),
            format!("IP {}", or_dash(&net.address)),
            format!("GW {}", or_dash(&net.gateway)),
        ];
        if net.dns.is_empty() {
            v.push("DNS -".to_string());
        }
        v.extend(
            net.dns
                .iter()
                .take(MAX_LISTED_DNS)
                .map(|d| format!("DNS {d}")),
        );
        v.push(match net.mode {
            NetworkMode::Dhcp => "OK: make static".to_string(),
            NetworkMode::Static => "OK: use DHCP".to_string(),
        });
        v
    }

    /// The scrollable body of the Alerts screen.
    fn alert_lines(&self) -> Vec<String> {
        let s = &self.status;
        let mut v: Vec<String> = if s.recent_alerts.is_empty() {
            s.newest_alert.iter().cloned().collect()
        } else {
            s.recent_alerts
                .iter()
                .take(MAX_LISTED_ALERTS)
                .cloned()
                .collect()
        };
        if v.is_empty() {
            v.push("(none)".to_string());
        }
        if s.alerts_unacked > 0 {
            v.push("OK: ack all".to_string());
        }
        v
    }
}

/// Moves a wrapping selection and keeps it inside a `rows`-high window starting at `top`.
fn step_selection(
    selected: usize,
    top: usize,
    down: bool,
    len: usize,
    rows: usize,
) -> (usize, usize) {
    let selected = if down {
        (selected + 1) % len
    } else {
        (selected + len - 1) % len
    };
    let top = if selected < top {
        selected
    } else if selected >= top + rows {
        selected + 1 - rows
    } else {
        top
    };
    (selected, top)
}

/// Scrolls a `visible`-high window over `len` lines by one, clamped.
fn scroll(top: usize, down: bool, len: usize, visible: usize) -> usize {
    let max_top = len.saturating_sub(visible);
    if down {
        (top + 1).min(max_top)
    } else {
        top.saturating_sub(1).min(max_top)
    }
}

fn lines(text: &[&str]) -> Vec<String> {
    text.iter().map(|l| (*l).to_string()).collect()
}

/// The first `cols` characters of `text`.
fn truncate(text: &str, cols: usize) -> String {
    text.chars().take(cols).collect()
}

/// Word-wraps `text` into at most `max_lines` lines of at most `cols` characters.
fn wrap(text: &str, cols: usize, max_lines: usize) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut line = String::new();
    let mut len = 0;
    for word in text.split_whitespace() {
        let mut word: Vec<char> = word.chars().collect();
        // Words longer than a line are broken hard.
        while word.len() > cols {
            if len > 0 {
                out.push(std::mem::take(&mut line));
                len = 0;
            }
            let rest = word.split_off(cols);
            out.push(word.into_iter().collect());
            word = rest;
            if out.len() >= max_lines {
                out.truncate(max_lines);
                return out;
            }
        }
        let needed = if len == 0 {
            word.len()
        } else {
            len + 1 + word.len()
        };
        if needed > cols && len > 0 {
            out.push(std::mem::take(&mut line));
            len = 0;
        }
        if out.len() >= max_lines {
            out.truncate(max_lines);
            return out;
        }
        if len > 0 {
            line.push(' ');
            len += 1;
        }
        len += word.len();
        line.extend(word);
    }
    if len > 0 {
        out.push(line);
    }
    out.truncate(max_lines);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Millis = 1_700_000_000_000;

    fn ok() -> KeyEvent {
        KeyEvent::short(Key::Ok)
    }
    fn long_ok() -> KeyEvent {
        KeyEvent::long(Key::Ok)
    }
    fn down() -> KeyEvent {
        KeyEvent::short(Key::Down)
    }
    fn up() -> KeyEvent {
        KeyEvent::short(Key::Up)
    }
    fn back() -> KeyEvent {
        KeyEvent::short(Key::Back)
    }

    fn status() -> PanelStatus {
        PanelStatus {
            hostname: "branch-pbx".into(),
            ip: "192.168.1.20".into(),
            registered: 42,
            active_calls: 3,
            trunks_up: 2,
            trunks: 2,
            survival: false,
            newest_alert: None,
            recent_alerts: Vec::new(),
            alerts_unacked: 0,
            last_ban: Some("203.0.113.7".into()),
            network: NetworkInfo {
                mode: NetworkMode::Dhcp,
                address: "192.168.1.20/24".into(),
                gateway: "192.168.1.1".into(),
                dns: vec!["192.168.1.1".into()],
            },
            last_backup_age_secs: Some(3_600),
            time_synchronised: Some(true),
        }
    }

    fn panel_20x4(s: &PanelStatus) -> Panel {
        let mut p = Panel::new(20, 4);
        p.update(T0, s);
        p
    }

    /// Presses `keys` one second apart starting at `t`, returning the actions.
    fn press(p: &mut Panel, t: Millis, keys: &[KeyEvent]) -> Vec<PanelAction> {
        keys.iter()
            .enumerate()
            .filter_map(|(i, &k)| p.key(t + 1_000 * i as u64, k))
            .collect()
    }

    #[test]
    fn status_cycles_every_four_seconds() {
        let mut p = panel_20x4(&status());
        assert_eq!(
            p.lines(),
            ["branch-pbx", "192.168.1.20", "Backup 60 min ago", ""]
        );
        p.update(T0 + 3_999, &status());
        assert_eq!(p.lines()[0], "branch-pbx");
        p.update(T0 + 4_000, &status());
        assert_eq!(p.lines(), ["Registered: 42", "Active calls: 3", "", ""]);
        p.update(T0 + 8_000, &status());
        assert_eq!(p.lines(), ["Trunks: 2/2 up", "", "", ""]);
        // No alert: back to the first page.
        p.update(T0 + 12_000, &status());
        assert_eq!(p.lines()[0], "branch-pbx");
    }

    #[test]
    fn newest_alert_page_is_wrapped_and_led_follows_unacked() {
        let mut s = status();
        s.newest_alert = Some("Toll fraud: ext 204 locked after 5 calls/min".into());
        s.alerts_unacked = 2;
        let mut p = panel_20x4(&s);
        assert!(p.alert_led());
        p.update(T0 + 12_000, &s);
        assert_eq!(
            p.lines(),
            [
                "ALERT (2 new)",
                "Toll fraud: ext 204",
                "locked after 5",
                "calls/min"
            ]
        );
        s.alerts_unacked = 0;
        p.update(T0 + 12_500, &s);
        assert!(!p.alert_led());
        assert_eq!(p.lines()[0], "Last alert");
    }

    #[test]
    fn survival_mode_is_shown_first_at_once_and_flagged_on_other_pages() {
        let mut p = panel_20x4(&status());
        p.update(T0 + 4_500, &status());
        assert_eq!(p.lines()[0], "Registered: 42");
        let mut s = status();
        s.survival = true;
        s.trunks_up = 0;
        p.update(T0 + 5_000, &s);
        assert_eq!(
            p.lines(),
            ["SURVIVAL MODE", "Trunks: 0/2 up", "Local calls only", ""]
        );
        p.update(T0 + 9_000, &s);
        assert_eq!(p.lines()[0], "branch-pbx         !");
        assert_eq!(p.lines()[1], "192.168.1.20");
        p.update(T0 + 13_000, &s);
        assert_eq!(p.lines()[0], "Registered: 42     !");
        p.update(T0 + 17_000, &s);
        assert_eq!(p.lines()[0], "SURVIVAL MODE");
    }

    #[test]
    fn up_down_flip_status_pages() {
        let mut p = panel_20x4(&status());
        p.key(T0 + 100, down());
        assert_eq!(p.lines()[0], "Registered: 42");
        p.key(T0 + 200, up());
        p.key(T0 + 300, up());
        assert_eq!(p.lines()[0], "Trunks: 2/2 up");
        // The flipped page stays for a full cycle.
        p.update(T0 + 4_200, &status());
        assert_eq!(p.lines()[0], "Trunks: 2/2 up");
        p.update(T0 + 4_300, &status());
        assert_eq!(p.lines()[0], "branch-pbx");
    }

    #[test]
    fn menu_navigation_scrolls_and_back_returns_up() {
        let mut p = panel_20x4(&status());
        p.key(T0, ok());
        assert_eq!(
            p.lines(),
            ["> Network", "  Alerts", "  Unban last", "  Reboot"]
        );
        press(&mut p, T0, &[down(), down(), down(), down()]);
        assert_eq!(
            p.lines(),
            ["  Alerts", "  Unban last", "  Reboot", "> Factory reset"]
        );
        p.key(T0 + 5_000, down());
        assert_eq!(p.lines()[3], "> Back");
        // Wraps to the top.
        p.key(T0 + 6_000, down());
        assert_eq!(p.lines()[0], "> Network");
        p.key(T0 + 7_000, back());
        assert!(p.on_status_screen());
        assert_eq!(p.lines()[0], "branch-pbx");
    }

    #[test]
    fn unban_confirm_flow_returns_the_address_shown() {
        let mut p = panel_20x4(&status());
        press(&mut p, T0, &[ok(), down(), down(), ok()]);
        assert_eq!(
            p.lines(),
            ["Unban address?", "203.0.113.7", "", "OK=yes Back=no"]
        );
        // A newer ban arriving meanwhile does not change what is unbanned.
        let mut s = status();
        s.last_ban = Some("198.51.100.9".into());
        p.update(T0 + 4_500, &s);
        assert_eq!(p.lines()[1], "203.0.113.7");
        let actions = press(&mut p, T0 + 5_000, &[ok()]);
        assert_eq!(actions, [PanelAction::UnbanLast("203.0.113.7".into())]);
        assert_eq!(p.lines()[..2], ["Unbanned", "203.0.113.7"]);
        // The message goes away by itself, back to the menu on the same item.
        p.update(T0 + 8_000, &s);
        assert_eq!(p.lines()[2], "> Unban last");
    }

    #[test]
    fn unban_back_cancels_and_no_ban_says_so() {
        let mut p = panel_20x4(&status());
        let actions = press(&mut p, T0, &[ok(), down(), down(), ok(), back()]);
        assert!(actions.is_empty());
        assert_eq!(p.lines()[2], "> Unban last");
        let mut s = status();
        s.last_ban = None;
        p.update(T0 + 6_000, &s);
        let actions = press(&mut p, T0 + 7_000, &[ok()]);
        assert!(actions.is_empty());
        assert_eq!(p.lines()[..2], ["Unban", "No recent ban"]);
    }

    #[test]
    fn factory_reset_needs_long_press_then_confirmation() {
        let mut p = panel_20x4(&status());
        // Up from the top wraps round to Back, then Factory reset.
        press(&mut p, T0, &[ok(), up(), up()]);
        assert_eq!(
            p.lines(),
            ["  Unban last", "  Reboot", "> Factory reset", "  Back"]
        );
        // Short OKs never reach the reset.
        let actions = press(&mut p, T0 + 3_000, &[ok(), ok(), ok()]);
        assert!(actions.is_empty());
        assert_eq!(
            p.lines(),
            [
                "Factory reset",
                "Hold OK for 2 s",
                "to continue",
                "Back: cancel"
            ]
        );
        // The long press opens the confirmation; it alone does not reset.
        let actions = press(&mut p, T0 + 6_000, &[long_ok()]);
        assert!(actions.is_empty());
        assert_eq!(
            p.lines(),
            ["Factory reset?", "ERASES ALL DATA", "", "OK=yes Back=no"]
        );
        let actions = press(&mut p, T0 + 7_000, &[ok()]);
        assert_eq!(actions, [PanelAction::FactoryReset]);
        assert_eq!(p.lines()[..2], ["Factory reset", "Rebooting..."]);
    }

    #[test]
    fn factory_reset_confirmation_can_be_cancelled() {
        let mut p = panel_20x4(&status());
        let actions = press(&mut p, T0, &[ok(), up(), up(), long_ok(), back(), ok()]);
        assert!(actions.is_empty());
        assert_eq!(p.lines()[0], "Factory reset");
        assert_eq!(p.lines()[1], "Hold OK for 2 s");
    }

    #[test]
    fn reboot_needs_confirmation() {
        let mut p = panel_20x4(&status());
        press(&mut p, T0, &[ok(), up(), up(), up(), ok()]);
        assert_eq!(p.lines(), ["Reboot now?", "", "", "OK=yes Back=no"]);
        let actions = press(&mut p, T0 + 6_000, &[ok()]);
        assert_eq!(actions, [PanelAction::Reboot]);
        assert_eq!(p.lines()[0], "Rebooting...");
    }

    #[test]
    fn alerts_list_scrolls_and_ok_acknowledges_all() {
        let mut s = status();
        s.newest_alert = Some("Ban 203.0.113.7 scan".into());
        s.recent_alerts = vec![
            "Ban 203.0.113.7 scan".into(),
            "Trunk sipgate down".into(),
            "Ext 204 locked".into(),
        ];
        s.alerts_unacked = 3;
        let mut p = panel_20x4(&s);
        press(&mut p, T0, &[ok(), down(), ok()]);
        assert_eq!(
            p.lines(),
            [
                "Alerts: 3 new",
                "Ban 203.0.113.7 scan",
                "Trunk sipgate down",
                "Ext 204 locked"
            ]
        );
        p.key(T0 + 3_000, down());
        assert_eq!(p.lines()[3], "OK: ack all");
        p.key(T0 + 3_100, down());
        assert_eq!(p.lines()[1], "Trunk sipgate down", "clamped at the end");
        let actions = press(&mut p, T0 + 4_000, &[ok()]);
        assert_eq!(actions, [PanelAction::AckAlerts]);
        assert_eq!(p.lines()[..2], ["Alerts", "acknowledged"]);
        s.alerts_unacked = 0;
        p.update(T0 + 5_000, &s);
        assert!(!p.alert_led());
    }

    #[test]
    fn network_screen_shows_lease_and_makes_it_static() {
        let mut p = panel_20x4(&status());
        press(&mut p, T0, &[ok(), ok()]);
        assert_eq!(
            p.lines(),
            [
                "Network: DHCP",
                "IP 192.168.1.20/24",
                "GW 192.168.1.1",
                "DNS 192.168.1.1"
            ]
        );
        p.key(T0 + 3_000, down());
        assert_eq!(p.lines()[3], "OK: make static");
        p.key(T0 + 4_000, ok());
        assert_eq!(
            p.lines(),
            ["Make IP static?", "192.168.1.20/24", "", "OK=yes Back=no"]
        );
        let actions = press(&mut p, T0 + 5_000, &[ok()]);
        assert_eq!(
            actions,
            [PanelAction::SetNetwork(NetworkSetting::Static {
                address: "192.168.1.20/24".into(),
                gateway: "192.168.1.1".into(),
                dns: vec!["192.168.1.1".into()],
            })]
        );
    }

    #[test]
    fn static_network_switches_back_to_dhcp() {
        let mut s = status();
        s.network.mode = NetworkMode::Static;
        let mut p = panel_20x4(&s);
        let actions = press(&mut p, T0, &[ok(), ok(), ok(), ok()]);
        assert_eq!(actions, [PanelAction::SetNetwork(NetworkSetting::Dhcp)]);
        // Without a lease there is nothing to keep.
        let mut s = status();
        s.network.address.clear();
        let mut p = panel_20x4(&s);
        let actions = press(&mut p, T0, &[ok(), ok(), ok()]);
        assert!(actions.is_empty());
        assert_eq!(p.lines()[0], "No DHCP lease");
    }

    #[test]
    fn sixty_seconds_without_a_key_returns_to_status() {
        let mut p = panel_20x4(&status());
        press(&mut p, T0, &[ok(), down(), down(), ok()]);
        assert_eq!(p.lines()[0], "Unban address?");
        p.update(T0 + 3_000 + 59_999, &status());
        assert_eq!(p.lines()[0], "Unban address?");
        p.update(T0 + 3_000 + 60_000, &status());
        assert!(p.on_status_screen());
        assert_eq!(p.lines()[0], "branch-pbx");
        // A key after the timeout acts on the status screen, not the old confirmation.
        let actions = press(&mut p, T0 + 70_000, &[ok()]);
        assert!(actions.is_empty());
        assert_eq!(p.lines()[0], "> Network");
    }

    #[test]
    fn long_back_goes_straight_to_status() {
        let mut p = panel_20x4(&status());
        press(&mut p, T0, &[ok(), ok()]);
        p.key(T0 + 3_000, KeyEvent::long(Key::Back));
        assert!(p.on_status_screen());
    }

    #[test]
    fn sixteen_by_two_truncates_and_keeps_the_hint_visible() {
        let mut s = status();
        s.hostname = "branch-office-pbx-01".into();
        s.newest_alert = Some("Scanner friendly-scanner banned".into());
        s.alerts_unacked = 1;
        let mut p = Panel::new(16, 2);
        p.update(T0, &s);
        assert_eq!(p.lines(), ["branch-office-pb", "192.168.1.20"]);
        p.update(T0 + 12_000, &s);
        assert_eq!(p.lines(), ["ALERT (1 new)", "Scanner"]);
        press(&mut p, T0 + 13_000, &[ok()]);
        assert_eq!(p.lines(), ["> Network", "  Alerts"]);
        press(&mut p, T0 + 14_000, &[down(), down(), ok()]);
        assert_eq!(p.lines(), ["203.0.113.7", "Unban? OK=yes"]);
        press(&mut p, T0 + 17_000, &[back(), down(), ok()]);
        assert_eq!(p.lines(), ["Reboot now?", "OK=yes Back=no"]);
        let mut s = status();
        s.survival = true;
        s.trunks_up = 0;
        let mut p = Panel::new(16, 2);
        p.update(T0, &s);
        assert_eq!(p.lines(), ["SURVIVAL MODE", "Trunks: 0/2 up"]);
        p.update(T0 + 4_000, &s);
        assert_eq!(p.lines()[0], "branch-pbx     !");
        assert!(p.lines().iter().all(|l| l.chars().count() <= 16));
    }

    #[test]
    fn hostile_lengths_stay_bounded() {
        let mut s = status();
        s.newest_alert = Some("x".repeat(100_000));
        s.recent_alerts = vec!["y".repeat(10_000); 10_000];
        s.alerts_unacked = 10_000;
        s.hostname = "ü".repeat(1_000);
        let mut p = Panel::new(20, 4);
        p.update(T0, &s);
        assert_eq!(p.lines()[0].chars().count(), 20);
        p.update(T0 + 12_000, &s);
        let lines = p.lines();
        assert_eq!(lines.len(), 4);
        assert!(lines.iter().all(|l| l.chars().count() <= 20));
        press(&mut p, T0 + 13_000, &[ok(), down(), ok()]);
        for i in 0..100 {
            p.key(T0 + 14_000 + i, down());
        }
        assert_eq!(p.lines()[3], "OK: ack all");
    }

    #[test]
    fn before_the_first_update_says_starting() {
        let p = Panel::new(16, 2);
        assert_eq!(p.lines(), ["Outpost", "Starting..."]);
        assert!(!p.alert_led());
    }

    #[test]
    fn wrap_breaks_words_and_limits_lines() {
        assert_eq!(wrap("aa bb cc", 5, 3), ["aa bb", "cc"]);
        assert_eq!(wrap("abcdefghij", 4, 5), ["abcd", "efgh", "ij"]);
        assert_eq!(wrap("one two three four", 4, 2), ["one", "two"]);
        assert!(wrap("", 4, 2).is_empty());
        assert!(wrap("abc", 4, 0).is_empty());
    }

    #[test]
    fn an_unsynchronised_clock_gets_a_warning_page() {
        let mut p = Panel::new(16, 2);
        let mut st = PanelStatus {
            hostname: "box".into(),
            last_backup_age_secs: Some(60),
            time_synchronised: Some(false),
            ..PanelStatus::default()
        };
        let mut seen = Vec::new();
        for t in 0..8 {
            p.update(t * 4_000, &st);
            seen.push(p.lines());
        }
        assert!(
            seen.iter()
                .any(|l| l[0] == "Clock NOT SYNCED" && l[1] == "NTP: no answer"),
            "{seen:?}"
        );
        for time in [Some(true), None] {
            st.time_synchronised = time;
            let mut seen = Vec::new();
            for t in 8..16 {
                p.update(t * 4_000, &st);
                seen.push(p.lines());
            }
            assert!(!seen.iter().any(|l| l[0].starts_with("Clock")), "{seen:?}");
        }
    }

    #[test]
    fn the_backup_page_says_how_old_the_newest_backup_is() {
        let mut p = Panel::new(16, 2);
        let mut st = PanelStatus {
            hostname: "box".into(),
            last_backup_age_secs: None,
            ..PanelStatus::default()
        };
        p.update(0, &st);
        let mut seen = Vec::new();
        for t in 0..8 {
            p.update(t * 4_000, &st);
            seen.push(p.lines());
        }
        assert!(seen.iter().any(|l| l[0] == "Backup: NEVER"), "{seen:?}");
        // A recent one: no warning page; on a 20x4 LCD the host page says how old it is.
        st.last_backup_age_secs = Some(7_200);
        let mut seen = Vec::new();
        for t in 8..16 {
            p.update(t * 4_000, &st);
            seen.push(p.lines());
        }
        assert!(!seen.iter().any(|l| l[0].starts_with("Backup")), "{seen:?}");
        let mut big = Panel::new(20, 4);
        big.update(0, &st);
        assert_eq!(big.lines()[2], "Backup 2 h ago");
        st.last_backup_age_secs = Some(5 * 86_400);
        let mut seen = Vec::new();
        for t in 16..24 {
            p.update(t * 4_000, &st);
            seen.push(p.lines());
        }
        assert!(
            seen.iter()
                .any(|l| l[0] == "Backup: OLD" && l[1] == "5 days ago"),
            "{seen:?}"
        );
    }
}
