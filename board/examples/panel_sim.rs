//! Front panel in the terminal with a made-up status: `cargo run -p board --example panel_sim`.
//!
//! Type u/d/o/b (or arrows) and Enter; `O` is a long OK. Ctrl-D ends.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use board::{Board, Led, NetworkInfo, NetworkMode, Panel, PanelStatus, SimBoard};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn main() {
    let mut board = SimBoard::stdio(20, 4);
    let (cols, rows) = board.geometry();
    let mut panel = Panel::new(cols, rows);
    let mut status = PanelStatus {
        hostname: "branch-pbx".into(),
        ip: "192.168.1.20".into(),
        registered: 42,
        active_calls: 3,
        trunks_up: 1,
        trunks: 2,
        newest_alert: Some("Scanner 203.0.113.7 banned (friendly-scanner)".into()),
        recent_alerts: vec!["Scanner 203.0.113.7 banned (friendly-scanner)".into()],
        alerts_unacked: 1,
        last_ban: Some("203.0.113.7".into()),
        network: NetworkInfo {
            mode: NetworkMode::Dhcp,
            address: "192.168.1.20/24".into(),
            gateway: "192.168.1.1".into(),
            dns: vec!["192.168.1.1".into()],
        },
        ..PanelStatus::default()
    };
    loop {
        let now = now_ms();
        panel.update(now, &status);
        for key in board.poll_keys(now).unwrap_or_default() {
            if let Some(action) = panel.key(now, key) {
                println!("action: {action:?}");
                if action == board::PanelAction::AckAlerts {
                    status.alerts_unacked = 0;
                }
            }
        }
        if let Err(e) = board
            .show(now, &panel.lines())
            .and_then(|()| board.set_led(Led::Alert, panel.alert_led()))
        {
            eprintln!("panel: {e}");
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
