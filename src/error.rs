//! How an error is told to a person: its message and its causes, each said once.

use std::error::Error;

/// `error: cause: cause …` on one line. Many errors (this crate's, sqlx's) put their cause in their own
/// message as well as behind `source()`; a cause whose text is already said is left out, so that a
/// message does not repeat itself.
pub fn chain(error: &(dyn Error + 'static)) -> String {
    let mut told = error.to_string();
    let mut next = error.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !text.is_empty() && !told.contains(&text) {
            told.push_str(": ");
            told.push_str(&text);
        }
        next = cause.source();
    }
    told
}

#[cfg(test)]
mod tests {
    use super::chain;

    #[derive(Debug, thiserror::Error)]
    #[error("reading the template t.txt")]
    struct Reading(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("store: migration failed: {0}")]
    struct Embedding(#[from] std::io::Error);

    #[test]
    fn each_cause_is_said_once() {
        let io = || std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        // A cause kept only behind `source()` is told.
        assert_eq!(chain(&Reading(io())), "reading the template t.txt: no such file");
        // A cause its error already says is not told again.
        assert_eq!(chain(&Embedding(io())), "store: migration failed: no such file");
    }
}
