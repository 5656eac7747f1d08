//! What the official IronWorker clients send that needs translating.

/// The command the old service ran for a legacy `runtime` and `file_name`, for clients that send
/// no `command`.
pub fn command_for_runtime(runtime: &str, file_name: &str) -> Option<String> {
    if file_name.is_empty() {
        return None;
    }
    let interpreter = match runtime.to_ascii_lowercase().as_str() {
        "python" | "python3" | "python2" => "python3",
        "node" | "nodejs" | "node.js" => "node",
        "ruby" => "ruby",
        "php" => "php",
        "sh" | "bash" | "shell" => "sh",
        "binary" | "go" => return Some(format!("./{file_name}")),
        _ => return None,
    };
    Some(format!("{interpreter} {file_name}"))
}

/// The Python client under Python 3 sends a zip as the text of a bytes literal (`b'PK\x03...'`).
/// Returns the bytes it stands for, or `None` when `raw` is not such a literal.
pub fn decode_python_bytes_literal(raw: &[u8]) -> Option<Vec<u8>> {
    let quote = match raw {
        [b'b', q @ (b'\'' | b'"'), ..] => *q,
        _ => return None,
    };
    let inner = raw
        .strip_prefix(&[b'b', quote][..])?
        .strip_suffix(&[quote][..])?;
    let mut out = Vec::with_capacity(inner.len());
    let mut i = 0;
    while i < inner.len() {
        let c = inner[i];
        if c != b'\\' {
            out.push(c);
            i += 1;
            continue;
        }
        let next = *inner.get(i + 1)?;
        i += 2;
        match next {
            b'\\' => out.push(b'\\'),
            b'\'' => out.push(b'\''),
            b'"' => out.push(b'"'),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'a' => out.push(0x07),
            b'b' => out.push(0x08),
            b'f' => out.push(0x0c),
            b'v' => out.push(0x0b),
            b'0'..=b'7' => {
                // Octal escapes: up to three digits.
                let mut value = u32::from(next - b'0');
                let mut taken = 0;
                while taken < 2 {
                    match inner.get(i) {
                        Some(d @ b'0'..=b'7') => {
                            value = value * 8 + u32::from(d - b'0');
                            i += 1;
                            taken += 1;
                        }
                        _ => break,
                    }
                }
                out.push(u8::try_from(value).ok()?);
            }
            b'x' => {
                let hex = inner.get(i..i + 2)?;
                out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
                i += 2;
            }
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtimes_map_to_the_commands_the_old_service_ran() {
        assert_eq!(
            command_for_runtime("python", "hello.py").unwrap(),
            "python3 hello.py"
        );
        assert_eq!(command_for_runtime("node", "w.js").unwrap(), "node w.js");
        assert_eq!(command_for_runtime("ruby", "w.rb").unwrap(), "ruby w.rb");
        assert_eq!(
            command_for_runtime("sh", "__runner__.sh").unwrap(),
            "sh __runner__.sh"
        );
        assert_eq!(command_for_runtime("binary", "w").unwrap(), "./w");
        assert_eq!(command_for_runtime("cobol", "w"), None);
        assert_eq!(command_for_runtime("python", ""), None);
    }

    #[test]
    fn python_bytes_literals_decode_to_their_bytes() {
        let literal = br#"b'PK\x03\x04\n\\ \'q\' "d" \t\0\177'"#;
        assert_eq!(
            decode_python_bytes_literal(literal).unwrap(),
            b"PK\x03\x04\n\\ 'q' \"d\" \t\0\x7f".to_vec()
        );
        assert_eq!(
            decode_python_bytes_literal(b"b\"x'y\"").unwrap(),
            b"x'y".to_vec()
        );
    }

    #[test]
    fn anything_else_is_not_a_bytes_literal() {
        assert_eq!(decode_python_bytes_literal(b"PK\x03\x04"), None);
        assert_eq!(decode_python_bytes_literal(b"b'unterminated"), None);
        assert_eq!(decode_python_bytes_literal(br"b'\x4'"), None);
        assert_eq!(decode_python_bytes_literal(br"b'\q'"), None);
    }
}
