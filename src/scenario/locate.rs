//! Find the line of a field in a YAML document, so that validation errors can point at it.
//!
//! serde gives us the field path of a problem but YAML parsers that feed serde keep no spans, so this walks
//! the block-style text the way a reader would: a key at the child indentation of its parent, a list item
//! by its `- ` marker. Flow-style values (`[a, b]`) resolve to the line of their key.

/// One step of a field path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// Render a path as `channels.email.paths[1].weight`.
pub fn render(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                // An empty key (`"": 1`) is shown as such rather than as nothing.
                out.push_str(if k.is_empty() { "\"\"" } else { k });
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// Convert a `serde_path_to_error` path into segments.
pub fn from_serde(path: &serde_path_to_error::Path) -> Vec<Seg> {
    use serde_path_to_error::Segment;
    path.iter()
        .filter_map(|s| match s {
            Segment::Map { key } => Some(Seg::Key(key.clone())),
            Segment::Seq { index } => Some(Seg::Index(*index)),
            Segment::Enum { .. } | Segment::Unknown => None,
        })
        .collect()
}

/// Where a YAML deserialization error is and what it says: (1-based line, field path, message without
/// serde_yaml's own position and path prefix).
pub fn yaml_error(text: &str, e: &serde_path_to_error::Error<serde_yaml::Error>) -> (usize, String, String) {
    let segs = from_serde(e.path());
    let mut message = e.inner().to_string();
    if let Some(i) = message.find(" at line ") {
        message.truncate(i);
    }
    // serde_yaml starts some messages with the path (`kafka: unknown field…`); the path is shown already.
    let message = match message.split_once(": ") {
        Some((head, rest)) if !head.contains(' ') && !head.contains('`') => rest.to_owned(),
        _ => message,
    };
    let line = locate(text, &segs).or_else(|| e.inner().location().map(|l| l.line())).unwrap_or(1);
    let field = if segs.is_empty() { "(document)".to_owned() } else { render(&segs) };
    (line, field, message)
}

struct Line<'a> {
    indent: usize,
    text: &'a str,
}

fn meaningful(raw: &str) -> Option<Line<'_>> {
    let trimmed = raw.trim_start();
    if trimmed.is_empty() || trimmed.starts_with('#') || trimmed == "---" {
        return None;
    }
    Some(Line { indent: raw.len() - trimmed.len(), text: trimmed })
}

fn key_of(text: &str) -> Option<&str> {
    let (key, _) = text.split_once(':')?;
    let key = key.trim().trim_matches(|c| c == '"' || c == '\'');
    (!key.is_empty()).then_some(key)
}

/// 1-based line number of `path` in `text`, or of the deepest part of it that could be found.
pub fn locate(text: &str, path: &[Seg]) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    // The scope is [start, end) in lines; `first_col` is the column the first line's content starts at
    // when the scope opens in the middle of a line (after a `- ` marker).
    let (mut start, mut end) = (0usize, lines.len());
    let mut first_col: Option<usize> = None;
    let mut found: Option<usize> = None;

    for seg in path {
        // The child indentation is that of the first meaningful line in scope.
        let mut child: Option<usize> = None;
        for (i, raw) in lines.iter().enumerate().take(end).skip(start) {
            if let Some(l) = meaningful(raw) {
                child = Some(if i == start { first_col.unwrap_or(l.indent) } else { l.indent });
                break;
            }
        }
        let Some(child) = child else { return found };
        let mut hit: Option<(usize, usize)> = None; // (line index, column of content)
        let mut items = 0usize;
        for i in start..end {
            let raw = lines[i];
            let Some(mut l) = meaningful(raw) else { continue };
            if i == start {
                if let Some(c) = first_col {
                    l = Line { indent: c, text: raw.get(c..).unwrap_or("").trim_start() };
                }
            }
            if l.indent < child {
                break;
            }
            if l.indent != child {
                continue;
            }
            match seg {
                Seg::Key(k) => {
                    if key_of(l.text.trim_start_matches("- ")) == Some(k.as_str()) {
                        let col = if l.text.starts_with("- ") { l.indent + 2 } else { l.indent };
                        hit = Some((i, col));
                        break;
                    }
                }
                Seg::Index(n) => {
                    if l.text.starts_with("- ") || l.text == "-" {
                        if items == *n {
                            hit = Some((i, l.indent + 2));
                            break;
                        }
                        items += 1;
                    }
                }
            }
        }
        let Some((line, col)) = hit else { return found };
        found = Some(line + 1);
        // The new scope: this entry's lines, up to the next line at or left of its column.
        let mut stop = end;
        for (j, raw) in lines.iter().enumerate().take(end).skip(line + 1) {
            if let Some(l) = meaningful(raw) {
                if l.indent < col || (l.indent == col && matches!(seg, Seg::Key(_))) {
                    stop = j;
                    break;
                }
                if matches!(seg, Seg::Index(_)) && l.indent == col - 2 && l.text.starts_with('-') {
                    stop = j;
                    break;
                }
            }
        }
        match seg {
            Seg::Index(_) => {
                start = line;
                first_col = Some(col);
            }
            Seg::Key(_) => {
                // A value on the key's own line (scalar or flow) has no children below it.
                start = line + 1;
                first_col = None;
            }
        }
        end = stop;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
# comment
seed: 1
channels:
  email:
    delays:
      SEND: { dist: fixed, value: 1s }
    paths:
      - name: a
        weight: 1
        steps: [SEND, DELIVERY]
      - name: b
        weight: -1
  sms:
    paths: []
";

    fn k(s: &str) -> Seg {
        Seg::Key(s.into())
    }

    #[test]
    fn finds_nested_keys_and_items() {
        assert_eq!(locate(DOC, &[k("seed")]), Some(2));
        assert_eq!(locate(DOC, &[k("channels"), k("email"), k("delays"), k("SEND")]), Some(6));
        assert_eq!(locate(DOC, &[k("channels"), k("email"), k("paths"), Seg::Index(1), k("weight")]), Some(12));
        assert_eq!(locate(DOC, &[k("channels"), k("email"), k("paths"), Seg::Index(0), k("name")]), Some(8));
        assert_eq!(locate(DOC, &[k("channels"), k("sms"), k("paths")]), Some(14));
    }

    #[test]
    fn falls_back_to_deepest_found() {
        assert_eq!(locate(DOC, &[k("channels"), k("email"), k("nope")]), Some(4));
        assert_eq!(render(&[k("a"), Seg::Index(2), k("b")]), "a[2].b");
    }
}
