//! `application/x-www-form-urlencoded` bodies, parsed strictly: a `%` not
//! followed by two hex digits, or bytes that do not decode to UTF-8, make
//! the whole body malformed rather than being patched over.

use std::fmt;

/// Why a body is not a form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormError {
    /// A `%` without two hex digits after it.
    BadEscape,
    /// A name or value that is not UTF-8 once decoded.
    NotUtf8,
    /// A field without a name (`=x`).
    EmptyName,
}

impl fmt::Display for FormError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FormError::BadEscape => "a % is not followed by two hex digits",
            FormError::NotUtf8 => "a field is not UTF-8",
            FormError::EmptyName => "a field has no name",
        })
    }
}

/// The fields of a form body, in order.
pub fn parse(body: &[u8]) -> Result<Vec<(String, String)>, FormError> {
    body.split(|&b| b == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = match pair.iter().position(|&b| b == b'=') {
                Some(at) => (&pair[..at], &pair[at + 1..]),
                None => (pair, &b""[..]),
            };
            let name = decode(name)?;
            if name.is_empty() {
                return Err(FormError::EmptyName);
            }
            Ok((name, decode(value)?))
        })
        .collect()
}

/// `+` is a space; `%XY` a byte.
fn decode(raw: &[u8]) -> Result<String, FormError> {
    let mut bytes = Vec::with_capacity(raw.len());
    let mut rest = raw.iter();
    while let Some(&b) = rest.next() {
        match b {
            b'+' => bytes.push(b' '),
            b'%' => {
                let hi = rest.next().and_then(|&d| (d as char).to_digit(16));
                let lo = rest.next().and_then(|&d| (d as char).to_digit(16));
                match (hi, lo) {
                    (Some(hi), Some(lo)) => bytes.push((hi * 16 + lo) as u8),
                    _ => return Err(FormError::BadEscape),
                }
            }
            b => bytes.push(b),
        }
    }
    String::from_utf8(bytes).map_err(|_| FormError::NotUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(body: &str) -> Result<Vec<(String, String)>, FormError> {
        parse(body.as_bytes())
    }

    #[test]
    fn decodes_names_and_values() {
        assert_eq!(
            fields("name=Ada+Lovelace&email=ada%40example.org&newsletter=yes").unwrap(),
            [
                ("name".to_owned(), "Ada Lovelace".to_owned()),
                ("email".to_owned(), "ada@example.org".to_owned()),
                ("newsletter".to_owned(), "yes".to_owned()),
            ]
        );
        assert_eq!(
            fields("city=Z%C3%BCrich&empty=&flag").unwrap(),
            [
                ("city".to_owned(), "Zürich".to_owned()),
                ("empty".to_owned(), String::new()),
                ("flag".to_owned(), String::new()),
            ]
        );
        assert_eq!(fields("").unwrap(), []);
        assert_eq!(fields("a=1&&b=2").unwrap().len(), 2);
        assert_eq!(fields("eq=a%3Db=c").unwrap()[0].1, "a=b=c");
    }

    #[test]
    fn refuses_malformed_bodies() {
        assert_eq!(fields("a=%"), Err(FormError::BadEscape));
        assert_eq!(fields("a=%4"), Err(FormError::BadEscape));
        assert_eq!(fields("a=%zz"), Err(FormError::BadEscape));
        assert_eq!(fields("a=%ff%fe"), Err(FormError::NotUtf8));
        assert_eq!(fields("=value"), Err(FormError::EmptyName));
    }
}
