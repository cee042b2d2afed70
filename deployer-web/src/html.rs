//! Small text helpers: HTML escaping, URL encoding, and ANSI colours to HTML.

/// `s` with `& < > " '` escaped for HTML text and attributes.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A time (Unix milliseconds) as the pages show it: `2026-12-01 17:05:48` (UTC).
pub fn time_text(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(String::new, |t| t.format("%Y-%m-%d %H:%M:%S").to_string())
}

/// `s` percent-encoded for a URL query component.
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Turns log lines with ANSI colour codes (SGR) into HTML, one line at a
/// time; colours carry over from one line to the next, as in a terminal.
/// Other escape sequences are dropped, with the text of operating-system
/// commands (`ESC ] 0;title BEL` sets a window title: it is not log text).
#[derive(Debug, Default)]
pub struct AnsiToHtml {
    fg: Option<u8>,
    bold: bool,
}

impl AnsiToHtml {
    /// A converter in the default state.
    pub fn new() -> AnsiToHtml {
        AnsiToHtml::default()
    }

    /// Opens a span for the current colours; returns where the tag starts
    /// and ends, so that an empty span can be taken back.
    fn open(&self, out: &mut String) -> Option<(usize, usize)> {
        let mut classes = Vec::new();
        if let Some(fg) = self.fg {
            classes.push(format!("fg{fg}"));
        }
        if self.bold {
            classes.push("bold".to_owned());
        }
        if classes.is_empty() {
            return None;
        }
        let start = out.len();
        out.push_str(&format!("<span class=\"{}\">", classes.join(" ")));
        Some((start, out.len()))
    }

    fn close(out: &mut String, open: Option<(usize, usize)>) {
        match open {
            Some((start, end)) if out.len() == end => out.truncate(start),
            Some(_) => out.push_str("</span>"),
            None => {}
        }
    }

    fn apply(&mut self, params: &str) {
        let codes: Vec<u32> =
            if params.is_empty() { vec![0] } else { params.split(';').filter_map(|p| p.parse().ok()).collect() };
        for code in codes {
            match code {
                0 => *self = AnsiToHtml::default(),
                1 => self.bold = true,
                22 => self.bold = false,
                30..=37 => self.fg = Some((code - 30) as u8),
                90..=97 => self.fg = Some((code - 90 + 8) as u8),
                39 => self.fg = None,
                _ => {}
            }
        }
    }

    /// One line (without its newline) as escaped HTML. A carriage return
    /// starts the line again, as on a terminal (progress bars): only the
    /// text after the last one is shown.
    pub fn line(&mut self, line: &str) -> String {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if let Some(at) = line.rfind('\r') {
            // Keep the colours set before the overwritten text.
            let _ = self.line_html(&line[..at]);
            return self.line_html(&line[at + 1..]);
        }
        self.line_html(line)
    }

    fn line_html(&mut self, line: &str) -> String {
        let mut out = String::with_capacity(line.len() + 16);
        let mut open = self.open(&mut out);
        let mut chars = line.char_indices().peekable();
        let mut text_start = 0;
        while let Some((i, c)) = chars.next() {
            if c != '\x1b' {
                continue;
            }
            out.push_str(&escape(&line[text_start..i]));
            // CSI: ESC [ params final-byte
            let mut end = i + 1;
            if let Some(&(_, ']')) = chars.peek() {
                // OSC (a window title, a hyperlink): ESC ] … BEL or ESC \.
                // Dropped, with its text.
                chars.next();
                end = line.len();
                while let Some((j, d)) = chars.next() {
                    if d == '\x07' {
                        end = j + 1;
                        break;
                    }
                    if d == '\x1b' {
                        if let Some(&(k, '\\')) = chars.peek() {
                            chars.next();
                            end = k + 1;
                            break;
                        }
                    }
                }
            } else if let Some(&(j, c)) = chars.peek().filter(|(_, c)| *c != '[') {
                // Another two-character escape (ESC c, ESC 7, …): dropped.
                chars.next();
                end = j + c.len_utf8();
            } else if let Some(&(_, '[')) = chars.peek() {
                chars.next();
                let params_start = i + 2;
                end = line.len();
                let mut fin = None;
                for (j, d) in chars.by_ref() {
                    if ('@'..='~').contains(&d) {
                        end = j + 1;
                        fin = Some((j, d));
                        break;
                    }
                }
                if let Some((j, 'm')) = fin {
                    Self::close(&mut out, open);
                    self.apply(&line[params_start..j]);
                    open = self.open(&mut out);
                }
            }
            text_start = end;
        }
        out.push_str(&escape(&line[text_start.min(line.len())..]));
        Self::close(&mut out, open);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_and_encoding() {
        assert_eq!(escape(r#"<a href="x">&'"#), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
        assert_eq!(url_encode("repo a/b&c"), "repo%20a%2Fb%26c");
    }

    #[test]
    fn ansi_colours_become_spans_and_carry_over_lines() {
        let mut a = AnsiToHtml::new();
        assert_eq!(a.line("\x1b[31merror\x1b[0m: <bad>"), "<span class=\"fg1\">error</span>: &lt;bad&gt;");
        assert_eq!(a.line("\x1b[1;32mok"), "<span class=\"fg2 bold\">ok</span>");
        assert_eq!(a.line("still green"), "<span class=\"fg2 bold\">still green</span>");
        assert_eq!(a.line("\x1b[mplain\x1b[2K"), "plain");
        assert_eq!(a.line("cut \x1b[3"), "cut ");
    }

    #[test]
    fn title_setting_and_other_escapes_are_stripped() {
        let mut a = AnsiToHtml::new();
        assert_eq!(a.line("\x1b]0;my title\x07build started"), "build started");
        assert_eq!(a.line("a\x1b]2;t\x1b\\b"), "ab");
        assert_eq!(a.line("x\x1b]8;;http://evil\x07link\x1b]8;;\x07y"), "xlinky");
        assert_eq!(a.line("\x1b7saved\x1b8"), "saved");
        assert_eq!(a.line("unterminated \x1b]0;title"), "unterminated ");
        assert_eq!(a.line("10%\r50%\r100% done\r"), "100% done");
    }
}
