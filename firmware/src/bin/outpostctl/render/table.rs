//! The one text table every listing prints: an optional header row, then one line per row.
//!
//! Columns are as wide as their widest cell (in characters) and separated by two spaces;
//! no line has trailing whitespace. Cells are sanitised: User-Agents, contacts and reasons
//! come from the network and must not reach the admin's terminal as escape sequences.
//! Scripts and the black-box tests read these tables, so the layout is fixed: change it
//! only with them.

use super::text::sanitize;

/// How a column's cells sit within its width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Align {
    /// Text first, padding after (every table outpostctl prints today).
    #[default]
    Left,
    /// Padding first: for a numeric column of a new table. The existing tables stay
    /// left-aligned because scripts read them as they are.
    #[cfg_attr(not(test), allow(dead_code))]
    Right,
}

/// A text table: an optional header row, rows of cells, per-column alignment.
#[derive(Debug, Clone, Default)]
pub struct Table {
    headers: Option<Vec<String>>,
    align: Vec<Align>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table under a header row.
    pub fn new(headers: &[&str]) -> Table {
        Table {
            headers: Some(headers.iter().map(|h| (*h).to_owned()).collect()),
            ..Table::default()
        }
    }

    /// A table without a header row: `key  value` lines and other plain lists.
    pub fn plain() -> Table {
        Table::default()
    }

    /// Sets the alignment of column `column` (0-based; every column is left-aligned unless
    /// set).
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn align(mut self, column: usize, align: Align) -> Table {
        if self.align.len() <= column {
            self.align.resize(column + 1, Align::Left);
        }
        self.align[column] = align;
        self
    }

    /// Appends a `key  value` row.
    pub fn pair(&mut self, key: &str, value: impl Into<String>) {
        self.rows.push(vec![key.to_owned(), value.into()]);
    }

    /// The table with `rows` appended.
    pub fn rows(mut self, rows: impl IntoIterator<Item = Vec<String>>) -> Table {
        self.rows.extend(rows);
        self
    }

    /// Whether the table has no rows (the header row does not count).
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table's text, each line ending in `\n`; a table without rows prints only its
    /// header row.
    pub fn render(&self) -> String {
        let mut all: Vec<Vec<String>> = Vec::with_capacity(self.rows.len() + 1);
        if let Some(h) = &self.headers {
            all.push(h.clone());
        }
        all.extend(
            self.rows
                .iter()
                .map(|r| r.iter().map(|c| sanitize(c)).collect::<Vec<_>>()),
        );
        let columns = all.iter().map(Vec::len).max().unwrap_or(0);
        let mut widths = vec![0usize; columns];
        for row in &all {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in &all {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                let pad = widths[i].saturating_sub(cell.chars().count());
                match self.align.get(i).copied().unwrap_or_default() {
                    Align::Left => {
                        line.push_str(cell);
                        line.extend(std::iter::repeat_n(' ', pad));
                    }
                    Align::Right => {
                        line.extend(std::iter::repeat_n(' ', pad));
                        line.push_str(cell);
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    /// [`Table::render`], or `empty` when the table has no rows.
    pub fn render_or(&self, empty: &str) -> String {
        if self.is_empty() {
            empty.to_owned()
        } else {
            self.render()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extensions() -> Table {
        Table::new(&["EXT", "NAME", "REGISTERED"]).rows([
            vec!["100".to_owned(), "Front desk".to_owned(), "2".to_owned()],
            vec!["1001".to_owned(), "-".to_owned(), "0".to_owned()],
        ])
    }

    #[test]
    fn table_is_aligned_without_trailing_spaces() {
        assert_eq!(
            extensions().render(),
            "EXT   NAME        REGISTERED\n\
             100   Front desk  2\n\
             1001  -           0\n"
        );
    }

    #[test]
    fn right_aligned_columns_pad_in_front() {
        assert_eq!(
            extensions()
                .align(0, Align::Right)
                .align(2, Align::Right)
                .render(),
            " EXT  NAME        REGISTERED\n \
             100  Front desk           2\n\
             1001  -                    0\n"
        );
    }

    #[test]
    fn plain_tables_have_no_header_and_widths_count_characters() {
        let mut t = Table::plain();
        t.pair("größe", "1");
        t.pair("n", "2");
        let t = t.rows([vec!["only".to_owned()]]);
        assert_eq!(t.render(), "größe  1\nn      2\nonly\n");
    }

    #[test]
    fn cells_are_sanitised_and_empty_tables_say_so() {
        let t = Table::new(&["UA"]).rows([vec!["evil\u{1b}[2J\nphone".to_owned()]]);
        assert_eq!(t.render(), "UA\nevil?[2J?phone\n");
        let empty = Table::new(&["RULE", "HITS"]);
        assert_eq!(empty.render(), "RULE  HITS\n");
        assert_eq!(empty.render_or("no rules\n"), "no rules\n");
        assert_eq!(Table::plain().render(), "");
    }
}
