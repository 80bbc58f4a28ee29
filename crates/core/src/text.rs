//! Shortening text for error messages, Events and logs.

/// At most `max` bytes of `text`, cut at a character boundary, with `…`
/// appended when something was cut.
pub fn shorten(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    format!("{}…", &text[..text.floor_char_boundary(max)])
}

/// Cuts `text` to at most `max` bytes, at a character boundary, in place.
pub fn truncate(text: &mut String, max: usize) {
    if text.len() > max {
        text.truncate(text.floor_char_boundary(max));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_at_character_boundaries() {
        assert_eq!(shorten("short", 10), "short");
        assert_eq!(shorten("ééé", 3), "é…");
        let mut s = String::from("aé");
        truncate(&mut s, 2);
        assert_eq!(s, "a");
    }
}
