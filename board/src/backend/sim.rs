//! The simulated front panel for development: the LCD drawn as a box of text, keys from stdin.
//!
//! Keys are read a line at a time (type, then Enter): `u` up, `d` down, `o` OK, `b` back,
//! capital letters for a long press (`O` = long OK), the arrow keys (up, down, right = OK,
//! left = back), and an empty line (just Enter) = OK. Several keys on one line are pressed
//! in order.

use std::io::{BufRead, Write};
use std::sync::mpsc::{self, Receiver, TryRecvError};

use crate::backend::{Board, BoardError, Presence};
use crate::buttons::{Key, KeyEvent};
use crate::leds::Led;
use crate::Millis;

/// Most key events one line of input may carry (longer lines are cut).
const MAX_KEYS_PER_LINE: usize = 32;

/// A terminal stand-in for the front panel.
pub struct SimBoard {
    cols: u8,
    rows: u8,
    out: Box<dyn Write + Send>,
    keys: Receiver<KeyEvent>,
    /// What was drawn last: the display lines and the LEDs.
    drawn: Option<(Vec<String>, [bool; 2])>,
    lines: Vec<String>,
    leds: [bool; 2],
}

impl std::fmt::Debug for SimBoard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimBoard")
            .field("cols", &self.cols)
            .field("rows", &self.rows)
            .field("lines", &self.lines)
            .field("leds", &self.leds)
            .finish_non_exhaustive()
    }
}

impl SimBoard {
    /// A simulated `cols` x `rows` panel drawn on stdout, keys read from stdin by a thread.
    pub fn stdio(cols: u8, rows: u8) -> Self {
        Self::with_io(
            cols,
            rows,
            std::io::BufReader::new(std::io::stdin()),
            std::io::stdout(),
        )
    }

    /// A simulated panel reading key lines from `input` (on a thread) and drawing to `out`.
    pub fn with_io(
        cols: u8,
        rows: u8,
        input: impl BufRead + Send + 'static,
        out: impl Write + Send + 'static,
    ) -> Self {
        let (tx, keys) = mpsc::channel();
        std::thread::Builder::new()
            .name("sim-keys".into())
            .spawn(move || {
                for line in input.lines() {
                    let Ok(line) = line else { break };
                    for key in parse_keys(&line) {
                        if tx.send(key).is_err() {
                            return;
                        }
                    }
                }
            })
            .map(drop)
            .unwrap_or_else(|e| eprintln!("sim panel: no key input ({e})"));
        Self {
            cols,
            rows,
            out: Box::new(out),
            keys,
            drawn: None,
            lines: Vec::new(),
            leds: [false; 2],
        }
    }

    /// Redraws the box if the lines or LEDs changed since the last drawing.
    fn redraw(&mut self) -> Result<(), BoardError> {
        let state = (self.lines.clone(), self.leds);
        if self.drawn.as_ref() == Some(&state) {
            return Ok(());
        }
        let text = render(&self.lines, self.cols, self.rows, self.leds);
        self.out.write_all(text.as_bytes())?;
        self.out.flush()?;
        self.drawn = Some(state);
        Ok(())
    }
}

impl Board for SimBoard {
    fn geometry(&self) -> (u8, u8) {
        (self.cols, self.rows)
    }

    fn show(&mut self, _now: Millis, lines: &[String]) -> Result<(), BoardError> {
        self.lines = lines.iter().take(usize::from(self.rows)).cloned().collect();
        self.redraw()
    }

    fn poll_keys(&mut self, _now: Millis) -> Result<Vec<KeyEvent>, BoardError> {
        let mut events = Vec::new();
        while events.len() < MAX_KEYS_PER_LINE {
            match self.keys.try_recv() {
                Ok(event) => events.push(event),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        Ok(events)
    }

    fn set_led(&mut self, led: Led, on: bool) -> Result<(), BoardError> {
        let index = match led {
            Led::Alert => 0,
            Led::Status => 1,
        };
        self.leds[index] = on;
        self.redraw()
    }

    fn present(&self) -> Presence {
        Presence {
            lcd: true,
            buttons: true,
            leds: true,
        }
    }
}

/// The key presses typed on one line of terminal input.
pub fn parse_keys(line: &str) -> Vec<KeyEvent> {
    let line = line.trim_end_matches('\r');
    if line.is_empty() {
        return vec![KeyEvent::short(Key::Ok)];
    }
    let mut events = Vec::new();
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if events.len() >= MAX_KEYS_PER_LINE {
            break;
        }
        let event = match c {
            'u' => Some(KeyEvent::short(Key::Up)),
            'd' => Some(KeyEvent::short(Key::Down)),
            'o' => Some(KeyEvent::short(Key::Ok)),
            'b' => Some(KeyEvent::short(Key::Back)),
            'U' => Some(KeyEvent::long(Key::Up)),
            'D' => Some(KeyEvent::long(Key::Down)),
            'O' => Some(KeyEvent::long(Key::Ok)),
            'B' => Some(KeyEvent::long(Key::Back)),
            // Arrow keys: ESC [ A..D (or ESC O A..D in application cursor mode).
            '\u{1b}' if matches!(chars.peek(), Some('[' | 'O')) => {
                chars.next();
                match chars.next() {
                    Some('A') => Some(KeyEvent::short(Key::Up)),
                    Some('B') => Some(KeyEvent::short(Key::Down)),
                    Some('C') => Some(KeyEvent::short(Key::Ok)),
                    Some('D') => Some(KeyEvent::short(Key::Back)),
                    _ => None,
                }
            }
            _ => None,
        };
        events.extend(event);
    }
    events
}

/// The panel as a box of text with the LED states underneath.
pub fn render(lines: &[String], cols: u8, rows: u8, leds: [bool; 2]) -> String {
    let cols = usize::from(cols);
    let border = format!("+{}+\n", "-".repeat(cols));
    let mut text = border.clone();
    for row in 0..usize::from(rows) {
        let line = crate::lcd::fit(lines.get(row).map_or("", String::as_str), cols);
        text.push('|');
        text.push_str(&line);
        text.push_str("|\n");
    }
    text.push_str(&border);
    let state = |on: bool| if on { "ON " } else { "off" };
    text.push_str(&format!(
        " alert LED: {}  status LED: {}\n",
        state(leds[0]),
        state(leds[1])
    ));
    text
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A writer whose contents the test can read back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Shared {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().expect("lock").clone()).expect("utf8")
        }
    }

    #[test]
    fn parses_letters_arrows_and_enter() {
        assert_eq!(
            parse_keys("udob"),
            vec![
                KeyEvent::short(Key::Up),
                KeyEvent::short(Key::Down),
                KeyEvent::short(Key::Ok),
                KeyEvent::short(Key::Back)
            ]
        );
        assert_eq!(parse_keys("O"), vec![KeyEvent::long(Key::Ok)]);
        assert_eq!(
            parse_keys("\u{1b}[A\u{1b}[B\u{1b}[C\u{1b}[D"),
            vec![
                KeyEvent::short(Key::Up),
                KeyEvent::short(Key::Down),
                KeyEvent::short(Key::Ok),
                KeyEvent::short(Key::Back)
            ]
        );
        assert_eq!(parse_keys(""), vec![KeyEvent::short(Key::Ok)]);
        assert!(parse_keys("xyz \u{1b}").is_empty());
        assert_eq!(parse_keys(&"u".repeat(10_000)).len(), MAX_KEYS_PER_LINE);
    }

    #[test]
    fn draws_a_box_only_when_something_changed() {
        let out = Shared::default();
        let mut sim = SimBoard::with_io(8, 2, Cursor::new(Vec::new()), out.clone());
        sim.show(0, &["Hi".to_string(), "there, world".to_string()])
            .expect("show");
        let expected =
            "+--------+\n|Hi      |\n|there, w|\n+--------+\n alert LED: off  status LED: off\n";
        assert_eq!(out.text(), expected);
        sim.show(10, &["Hi".to_string(), "there, world".to_string()])
            .expect("show again");
        assert_eq!(out.text(), expected, "unchanged: not redrawn");
        sim.set_led(Led::Alert, true).expect("led");
        assert!(out.text().ends_with(" alert LED: ON   status LED: off\n"));
    }

    #[test]
    fn keys_typed_on_input_come_out_of_poll() {
        let input = Cursor::new(b"do\nO\n".to_vec());
        let mut sim = SimBoard::with_io(16, 2, input, Shared::default());
        let mut events = Vec::new();
        for _ in 0..200 {
            events.extend(sim.poll_keys(0).expect("poll"));
            if events.len() >= 3 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(
            events,
            vec![
                KeyEvent::short(Key::Down),
                KeyEvent::short(Key::Ok),
                KeyEvent::long(Key::Ok)
            ]
        );
    }
}
