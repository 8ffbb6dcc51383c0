//! Text from outside (hosts, commands, stored values) made safe to show:
//! one line, bounded, control characters escaped.

/// This machine's host name, as the kernel reports it.
pub(crate) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".to_owned())
}

/// `text` for a log line or a terminal: control characters (line breaks,
/// terminal escapes) escaped as `\n`, `\u{1b}`, ..., and cut after
/// `max_chars` characters with a note of the full length, so a value can
/// neither forge a line nor flood the output.
pub(crate) fn printable(text: &str, max_chars: usize) -> String {
    let mut shown = String::new();
    for (count, c) in text.chars().enumerate() {
        if count == max_chars {
            shown.push_str(&format!("… ({} bytes in all)", text.len()));
            break;
        }
        if c.is_control() {
            shown.extend(c.escape_debug());
        } else {
            shown.push(c);
        }
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_long_text_is_cut() {
        assert_eq!(printable("a\nb\u{1b}[31m", 100), "a\\nb\\u{1b}[31m");
        let long = "x".repeat(10_000);
        let shown = printable(&long, 8);
        assert_eq!(shown, "xxxxxxxx… (10000 bytes in all)");
        assert_eq!(printable("Zoë", 3), "Zoë");
    }

    #[test]
    fn the_host_name_is_never_empty() {
        assert!(!host_name().is_empty());
    }
}
