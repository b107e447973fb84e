//! How an [`Event`] is shown: one line of text in the style of strace and
//! ltrace, or one JSON object per line for programs to read.
//!
//! ```text
//! 0.001234567 4242/4243 ev(100, -1, "alpha", 0, 0x0, 0)
//! 0.001240001 4242/4243 ev() = 42 <0.000005434>
//! {"time_ns":80001234567,"pid":4242,"tid":4243,"probe":"ev","args":[100,-1,"alpha",0,"0x0",0]}
//! {"time_ns":80001240001,"pid":4242,"tid":4243,"probe":"ev","args":[],"ret":42,"duration_ns":5434}
//! ```
//!
//! Both writers take the probe's label and argument types from the caller,
//! which keeps them per probe, not per event ([`super::ProbeInfo::types`]
//! gives them). Only the first six types are shown (there are no more
//! registers); a type list shorter than six shows that many arguments. A
//! return event (`f%return`) shows its value by the first type (`hex`
//! when there is none) and no arguments.

use std::io::{self, Write};

use super::Event;
use crate::probes::ArgType;

/// Writes `event` as one line of text, ended by `\n`:
/// `SECONDS PID/TID LABEL(ARGS)`, or for a return event (as strace's `-T`
/// shows a call's end) `SECONDS PID/TID LABEL() = VALUE <DURATION>`, the
/// duration in seconds; `?` for a value a tail call left unknown, or a
/// call whose entry was not timed.
///
/// `SECONDS` is the time since `start_ns` (the program's start, in
/// `CLOCK_MONOTONIC` nanoseconds) with nine decimals: small numbers a
/// person can compare, where the absolute clock would be ten digits of
/// uptime. An event stamped before the start (which a correct monitor never
/// makes) shows a `-`. Arguments are shown by their type:
///
/// - `int` in signed decimal, `uint` in unsigned decimal, `hex` as `0x…` in
///   lowercase;
/// - `str` as a C string in double quotes: `"` and `\` escaped, `\n`, `\t`
///   and `\r` by name, any other byte outside printable ASCII as `\xNN`
///   (always two digits, as Rust and Python read them), so the bytes can be
///   recovered exactly; a string cut at the monitor's limit is followed by
///   `...` (as strace does); a NULL pointer shows `NULL`; a pointer that
///   could not be read shows its value in hexadecimal, as strace does.
pub fn write_text(
    out: &mut impl Write,
    event: &Event,
    label: &str,
    types: &[ArgType],
    start_ns: u64,
) -> io::Result<()> {
    LINE.with(|line| {
        let mut line = line.borrow_mut();
        line.clear();
        append_text(&mut line, event, label, types, start_ns);
        out.write_all(&line)
    })
}

/// [`write_text`]'s line appended to `line` (see [`append_json`]).
pub fn append_text(
    line: &mut Vec<u8>,
    event: &Event,
    label: &str,
    types: &[ArgType],
    start_ns: u64,
) {
    line.reserve(128);
    match event.time_ns.checked_sub(start_ns) {
        Some(d) => seconds(line, d),
        None => {
            line.push(b'-');
            seconds(line, start_ns - event.time_ns);
        }
    }
    line.push(b' ');
    itoap::write_to_vec(line, event.pid);
    line.push(b'/');
    itoap::write_to_vec(line, event.tid);
    line.push(b' ');
    line.extend_from_slice(label.as_bytes());
    line.push(b'(');
    if let Some(r) = event.ret {
        // strace's form of a call's end (`-T`): ` = VALUE <SECONDS>`, `?`
        // for what is not known.
        line.extend_from_slice(b") = ");
        match r.value {
            Some(_) => text_value(line, ret_type(types), ret_arg(event)),
            None => line.push(b'?'),
        }
        line.extend_from_slice(b" <");
        match r.duration_ns {
            Some(ns) => seconds(line, ns),
            None => line.push(b'?'),
        }
        line.extend_from_slice(b">\n");
        return;
    }
    for (i, (t, arg)) in shown(event, types).enumerate() {
        if i > 0 {
            line.extend_from_slice(b", ");
        }
        text_value(line, t, arg);
    }
    line.extend_from_slice(b")\n");
}

/// A hit's arguments as a JSON array (see [`append_json`]); whether a
/// string among them was cut short.
pub(crate) fn json_args(line: &mut Vec<u8>, event: &Event, types: &[ArgType]) -> io::Result<bool> {
    line.push(b'[');
    let mut cut = false;
    for (k, (t, arg)) in shown(event, types).enumerate() {
        if k > 0 {
            line.push(b',');
        }
        cut |= json_value(line, t, arg)?;
    }
    line.push(b']');
    Ok(cut)
}

/// A return event's value as JSON (`null` when a tail call left it
/// unknown); whether it is a string cut short.
pub(crate) fn json_ret(line: &mut Vec<u8>, event: &Event, types: &[ArgType]) -> io::Result<bool> {
    match event.ret.and_then(|r| r.value) {
        Some(_) => json_value(line, ret_type(types), ret_arg(event)),
        None => {
            line.extend_from_slice(b"null");
            Ok(false)
        }
    }
}

/// `ns` as seconds with nine decimals.
fn seconds(line: &mut Vec<u8>, ns: u64) {
    const NS: u64 = 1_000_000_000;
    itoap::write_to_vec(line, ns / NS);
    // Nine decimals: the digits of 1_000_000_000 + the fraction, whose
    // leading 1 becomes the point.
    let point = line.len();
    itoap::write_to_vec(line, NS + ns % NS);
    line[point] = b'.';
}

/// One value in the text form, by its type.
fn text_value(line: &mut Vec<u8>, t: ArgType, arg: Arg<'_>) {
    match t {
        // The register's bits read as two's complement.
        ArgType::Int => itoap::write_to_vec(line, arg.value as i64),
        ArgType::Uint => itoap::write_to_vec(line, arg.value),
        ArgType::Hex => hex(line, arg.value),
        ArgType::Str => match arg.string {
            Some(bytes) => {
                quote(line, bytes);
                if arg.truncated {
                    line.extend_from_slice(b"...");
                }
            }
            None if arg.value == 0 => line.extend_from_slice(b"NULL"),
            None => hex(line, arg.value),
        },
    }
}

/// One value in the JSON form, by its type; whether it is a string cut
/// short.
fn json_value(line: &mut Vec<u8>, t: ArgType, arg: Arg<'_>) -> io::Result<bool> {
    match t {
        ArgType::Int => itoap::write_to_vec(line, arg.value as i64),
        ArgType::Uint => itoap::write_to_vec(line, arg.value),
        ArgType::Hex => {
            line.push(b'"');
            hex(line, arg.value);
            line.push(b'"');
        }
        ArgType::Str => match arg.string {
            Some(bytes) => {
                json_str(line, bytes)?;
                return Ok(arg.truncated);
            }
            None => line.extend_from_slice(b"null"),
        },
    }
    Ok(false)
}

/// A return event's value type: the one type its probe was given
/// (`f%return(TYPE)`), `hex` when none.
fn ret_type(types: &[ArgType]) -> ArgType {
    types.first().copied().unwrap_or(ArgType::Hex)
}

/// A return event's value, with its string if it was read as one.
fn ret_arg(event: &Event) -> Arg<'_> {
    Arg {
        value: event.ret.and_then(|r| r.value).unwrap_or(0),
        string: event.strings.first().and_then(|s| s.as_deref()),
        truncated: event.truncated[0],
    }
}

/// Writes `event` as one JSON object on one line, ended by `\n`, with the
/// keys, in order:
///
/// - `time_ns`: the absolute `CLOCK_MONOTONIC` time in nanoseconds (a
///   program can subtract any origin it likes; the text form's relative
///   seconds would lose that);
/// - `pid`, `tid`: numbers;
/// - `probe`: the label, a string;
/// - `args`: one value per type: `int` and `uint` as exact JSON integers
///   (i64 and u64), `hex` as a `"0x…"` string (JSON has no hexadecimal),
///   `str` as a string, or `null` for a NULL or unreadable pointer. Bytes
///   that are not UTF-8 become U+FFFD (JSON strings are Unicode; the text
///   form keeps every byte);
/// - `truncated`: only when some `str` argument was cut at the monitor's
///   limit, the indices (from 0) of those arguments in `args`.
///
/// A return event has `args` empty, then `ret`: the value by its type
/// (`null` when a tail call left it unknown), `duration_ns` (`null` when
/// the entry was not timed) and `ret_truncated: true` for a string cut
/// short.
///
/// An error is the writer's.
pub fn write_json(
    out: &mut impl Write,
    event: &Event,
    label: &str,
    types: &[ArgType],
) -> io::Result<()> {
    // Built in one buffer with integer formatting that skips `fmt`'s
    // machinery, then written at once: the drain's rate is this
    // function's. Only string arguments allocate (their lossy copies).
    LINE.with(|line| {
        let mut line = line.borrow_mut();
        line.clear();
        append_json(&mut line, event, label, types)?;
        out.write_all(&line)
    })
}

thread_local! {
    /// The line [`write_json`] builds, kept for the next.
    static LINE: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(256));
}

/// [`write_json`]'s line appended to `line`: for a writer that gathers
/// many lines in its own buffer before one write (one copy fewer per
/// event).
pub fn append_json(
    line: &mut Vec<u8>,
    event: &Event,
    label: &str,
    types: &[ArgType],
) -> io::Result<()> {
    // Numbers are written in place (`itoap`), not formatted aside and
    // copied: the copy of each small piece was a third of a line's cost.
    line.reserve(128);
    line.extend_from_slice(b"{\"time_ns\":");
    itoap::write_to_vec(line, event.time_ns);
    line.extend_from_slice(b",\"pid\":");
    itoap::write_to_vec(line, event.pid);
    line.extend_from_slice(b",\"tid\":");
    itoap::write_to_vec(line, event.tid);
    line.extend_from_slice(b",\"probe\":");
    json_str(line, label.as_bytes())?;
    line.extend_from_slice(b",\"args\":");
    if let Some(r) = event.ret {
        line.extend_from_slice(b"[],\"ret\":");
        let cut = json_ret(line, event, types)?;
        line.extend_from_slice(b",\"duration_ns\":");
        match r.duration_ns {
            Some(ns) => itoap::write_to_vec(line, ns),
            None => line.extend_from_slice(b"null"),
        }
        if cut {
            line.extend_from_slice(b",\"ret_truncated\":true");
        }
        line.extend_from_slice(b"}\n");
        return Ok(());
    }
    let cut = json_args(line, event, types)?;
    if cut {
        line.extend_from_slice(b",\"truncated\":[");
        let cuts = shown(event, types)
            .enumerate()
            .filter(|(_, (t, arg))| *t == ArgType::Str && arg.truncated && arg.string.is_some());
        for (n, (i, _)) in cuts.enumerate() {
            if n > 0 {
                line.push(b',');
            }
            itoap::write_to_vec(line, i);
        }
        line.push(b']');
    }
    line.extend_from_slice(b"}\n");
    Ok(())
}

/// `v` as `0x…` (lowercase, no leading zeros).
fn hex(line: &mut Vec<u8>, v: u64) {
    let mut buf = *b"0x0000000000000000";
    for (k, byte) in v.to_be_bytes().into_iter().enumerate() {
        let pair = usize::from(byte) * 2;
        buf[2 + 2 * k..4 + 2 * k].copy_from_slice(&HEX_PAIRS[pair..pair + 2]);
    }
    let zeros = (v.leading_zeros() as usize / 4).min(15);
    line.extend_from_slice(&buf[..2]);
    line.extend_from_slice(&buf[2 + zeros..]);
}

/// The two lowercase hex digits of every byte, in order: `"00" "01" … "ff"`.
const HEX_PAIRS: [u8; 512] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut t = [0u8; 512];
    let mut i = 0;
    while i < 256 {
        t[2 * i] = DIGITS[i >> 4];
        t[2 * i + 1] = DIGITS[i & 0xf];
        i += 1;
    }
    t
};

/// `s` as a JSON string: as it is between quotes when nothing in it needs
/// escaping (a probe's label, almost always), else as `serde_json` escapes it.
pub(crate) fn json_str(line: &mut Vec<u8>, s: &[u8]) -> io::Result<()> {
    if s.iter()
        .all(|&b| b >= b' ' && b != b'"' && b != b'\\' && b < 0x7f)
    {
        line.push(b'"');
        line.extend_from_slice(s);
        line.push(b'"');
        return Ok(());
    }
    serde_json::to_writer(&mut *line, &String::from_utf8_lossy(s))?;
    Ok(())
}

/// One argument of an event: its raw register and what was read for it.
#[derive(Clone, Copy)]
struct Arg<'a> {
    value: u64,
    string: Option<&'a [u8]>,
    truncated: bool,
}

/// The arguments the types ask for, each with its type.
fn shown<'a>(
    event: &'a Event,
    types: &'a [ArgType],
) -> impl Iterator<Item = (ArgType, Arg<'a>)> + Clone + 'a {
    let args = (0..event.args.len()).map(|i| Arg {
        value: event.args[i],
        string: event.strings.get(i).and_then(|s| s.as_deref()),
        truncated: event.truncated[i],
    });
    types.iter().copied().zip(args)
}

/// Bytes as a double-quoted C string literal.
fn quote(line: &mut Vec<u8>, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    line.push(b'"');
    for &b in bytes {
        match b {
            b'"' => line.extend_from_slice(b"\\\""),
            b'\\' => line.extend_from_slice(b"\\\\"),
            b'\n' => line.extend_from_slice(b"\\n"),
            b'\t' => line.extend_from_slice(b"\\t"),
            b'\r' => line.extend_from_slice(b"\\r"),
            b' '..=b'~' => line.push(b),
            _ => line.extend_from_slice(&[
                b'\\',
                b'x',
                DIGITS[usize::from(b >> 4)],
                DIGITS[usize::from(b & 0xf)],
            ]),
        }
    }
    line.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use ArgType::{Hex, Int, Str, Uint};

    const START: u64 = 80_000_000_000;

    /// The example of the module's documentation: `ev(100, -1, "alpha", 0, 0, 0)`.
    fn ev() -> Event {
        Event {
            time_ns: START + 1_234_567,
            pid: 4242,
            tid: 4243,
            probe: crate::events::ProbeId(0),
            args: [100, -1i64 as u64, 0x7fff_0000, 0, 0, 0],
            strings: vec![None, None, Some(b"alpha".to_vec()), None, None, None],
            truncated: [false; 6],
            ret: None,
        }
    }

    /// A return of `ev`: 42 after 5434 ns.
    fn ret(value: Option<u64>, duration_ns: Option<u64>) -> Event {
        Event {
            time_ns: START + 1_240_001,
            args: [0; 6],
            strings: Vec::new(),
            ret: Some(crate::events::Return { value, duration_ns }),
            ..ev()
        }
    }

    #[test]
    fn a_return_shows_its_value_and_duration_as_strace_does() {
        assert_eq!(
            text(&ret(Some(42), Some(5434)), "ev", &[Int]),
            "0.001240001 4242/4243 ev() = 42 <0.000005434>"
        );
        // hex by default; a tail call's value and an untimed call: `?`.
        assert_eq!(
            text(&ret(Some(42), Some(5434)), "ev", &[]),
            "0.001240001 4242/4243 ev() = 0x2a <0.000005434>"
        );
        assert_eq!(
            text(&ret(None, None), "ev", &[Int]),
            "0.001240001 4242/4243 ev() = ? <?>"
        );
        assert_eq!(
            json_line(&ret(Some(42), Some(5434)), "ev", &[Int]),
            r#"{"time_ns":80001240001,"pid":4242,"tid":4243,"probe":"ev","args":[],"ret":42,"duration_ns":5434}"#
        );
        let v = json(&ret(None, None), "ev", &[Int]);
        assert_eq!((&v["ret"], &v["duration_ns"]), (&Value::Null, &Value::Null));
        // A string, cut.
        let mut s = ret(Some(0x1000), Some(1));
        s.strings = vec![Some(b"abc".to_vec()), None, None, None, None, None];
        s.truncated[0] = true;
        assert_eq!(
            text(&s, "ev", &[Str]),
            "0.001240001 4242/4243 ev() = \"abc\"... <0.000000001>"
        );
        let v = json(&s, "ev", &[Str]);
        assert_eq!(
            (&v["ret"], &v["ret_truncated"]),
            (&json!("abc"), &json!(true))
        );
    }

    const EV: [ArgType; 6] = [Int, Int, Str, Uint, Hex, Int];

    fn text(event: &Event, label: &str, types: &[ArgType]) -> String {
        let mut out = Vec::new();
        write_text(&mut out, event, label, types, START).unwrap();
        let line = String::from_utf8(out).unwrap();
        line.strip_suffix('\n').expect("ends the line").to_string()
    }

    fn json_line(event: &Event, label: &str, types: &[ArgType]) -> String {
        let mut out = Vec::new();
        write_json(&mut out, event, label, types).unwrap();
        let line = String::from_utf8(out).unwrap();
        let line = line.strip_suffix('\n').expect("ends the line");
        assert!(!line.contains('\n'), "one line: {line}");
        assert_eq!(line.trim_end(), line, "no trailing spaces");
        line.to_string()
    }

    /// The JSON line, parsed back.
    fn json(event: &Event, label: &str, types: &[ArgType]) -> Value {
        serde_json::from_str(&json_line(event, label, types)).unwrap()
    }

    /// An event with one argument of each given value, the first a `str`
    /// read as `string`.
    fn one_str(value: u64, string: Option<&[u8]>, truncated: bool) -> Event {
        let mut e = ev();
        e.args[0] = value;
        e.strings[0] = string.map(<[u8]>::to_vec);
        e.truncated[0] = truncated;
        e
    }

    #[test]
    fn text_is_time_pid_tid_label_and_args() {
        assert_eq!(
            text(&ev(), "ev", &EV),
            r#"0.001234567 4242/4243 ev(100, -1, "alpha", 0, 0x0, 0)"#
        );
        let mut late = ev();
        late.time_ns = START + 12 * 1_000_000_000 + 5;
        assert_eq!(
            text(&late, "f+0x10", &[]),
            "12.000000005 4242/4243 f+0x10()"
        );
        let mut early = ev();
        early.time_ns = START - 1;
        assert_eq!(text(&early, "ev", &[]), "-0.000000001 4242/4243 ev()");
    }

    #[test]
    fn json_is_the_same_event_absolute() {
        let line = json_line(&ev(), "ev", &EV);
        assert_eq!(
            line,
            r#"{"time_ns":80001234567,"pid":4242,"tid":4243,"probe":"ev","args":[100,-1,"alpha",0,"0x0",0]}"#
        );
        assert_eq!(
            json(&ev(), "ev", &EV),
            json!({
                "time_ns": START + 1_234_567,
                "pid": 4242,
                "tid": 4243,
                "probe": "ev",
                "args": [100, -1, "alpha", 0, "0x0", 0],
            })
        );
    }

    #[test]
    fn no_types_no_args() {
        assert_eq!(text(&ev(), "ev", &[]), "0.001234567 4242/4243 ev()");
        assert_eq!(json(&ev(), "ev", &[])["args"], json!([]));
    }

    #[test]
    fn fewer_types_show_fewer_args_and_more_than_six_are_cut() {
        assert_eq!(
            text(&ev(), "ev", &[Int, Hex]),
            "0.001234567 4242/4243 ev(100, 0xffffffffffffffff)"
        );
        assert_eq!(
            json(&ev(), "ev", &[Int, Hex])["args"],
            json!([100, "0xffffffffffffffff"])
        );
        let seven = [Uint; 7];
        assert_eq!(
            text(&ev(), "ev", &seven),
            "0.001234567 4242/4243 ev(100, 18446744073709551615, 2147418112, 0, 0, 0)"
        );
        assert_eq!(
            json(&ev(), "ev", &seven)["args"].as_array().unwrap().len(),
            6
        );
    }

    #[test]
    fn integers_are_exact_at_the_limits() {
        let mut e = ev();
        e.args = [
            u64::MAX,
            u64::MAX,
            u64::MAX,
            i64::MIN as u64,
            i64::MAX as u64,
            0,
        ];
        let types = [Int, Uint, Hex, Int, Int, Hex];
        assert_eq!(
            text(&e, "f", &types),
            "0.001234567 4242/4243 f(-1, 18446744073709551615, 0xffffffffffffffff, \
             -9223372036854775808, 9223372036854775807, 0x0)"
        );
        let v = json(&e, "f", &types);
        let args = v["args"].as_array().unwrap();
        assert_eq!(args[0].as_i64(), Some(-1));
        assert_eq!(args[1].as_u64(), Some(u64::MAX));
        assert_eq!(args[2], json!("0xffffffffffffffff"));
        assert_eq!(args[3].as_i64(), Some(i64::MIN));
        assert_eq!(args[4].as_i64(), Some(i64::MAX));
        assert_eq!(args[5], json!("0x0"));
        assert!(json_line(&e, "f", &types).contains("18446744073709551615"));
    }

    #[test]
    fn hex_has_no_leading_zeros_and_all_sixteen_digits() {
        for (v, want) in [
            (0, "0x0"),
            (0xf, "0xf"),
            (0x10, "0x10"),
            (u64::MAX, "0xffffffffffffffff"),
            (1 << 63, "0x8000000000000000"),
        ] {
            let mut e = ev();
            e.args[0] = v;
            assert_eq!(
                text(&e, "f", &[Hex]),
                format!("0.001234567 4242/4243 f({want})")
            );
            assert_eq!(json(&e, "f", &[Hex])["args"], json!([want]));
            assert_eq!(format!("{v:#x}"), want, "as Rust writes it");
        }
    }

    #[test]
    fn hex_is_lowercase() {
        let mut e = ev();
        e.args[0] = 0xDEAD_BEEF;
        assert_eq!(text(&e, "f", &[Hex]), "0.001234567 4242/4243 f(0xdeadbeef)");
        assert_eq!(json(&e, "f", &[Hex])["args"], json!(["0xdeadbeef"]));
    }

    #[test]
    fn null_and_unreadable_strings() {
        let null = one_str(0, None, false);
        assert_eq!(text(&null, "f", &[Str]), "0.001234567 4242/4243 f(NULL)");
        assert_eq!(json(&null, "f", &[Str])["args"], json!([null]));
        let unreadable = one_str(0x1000, None, false);
        assert_eq!(
            text(&unreadable, "f", &[Str]),
            "0.001234567 4242/4243 f(0x1000)"
        );
        assert_eq!(json(&unreadable, "f", &[Str])["args"], json!([null]));
        let empty = one_str(0x1000, Some(b""), false);
        assert_eq!(text(&empty, "f", &[Str]), r#"0.001234567 4242/4243 f("")"#);
        assert_eq!(json(&empty, "f", &[Str])["args"], json!([""]));
    }

    #[test]
    fn strings_are_escaped() {
        let bytes = b"a\"b\\c\nd\te\rf\x01\x7f\x1b~ ";
        let e = one_str(0x1000, Some(bytes), false);
        assert_eq!(
            text(&e, "f", &[Str]),
            r#"0.001234567 4242/4243 f("a\"b\\c\nd\te\rf\x01\x7f\x1b~ ")"#
        );
        // JSON escapes its own way, and reads back to the same bytes.
        let line = json_line(&e, "f", &[Str]);
        assert!(!line.contains(|c: char| c < ' '), "{line}");
        assert_eq!(
            json(&e, "f", &[Str])["args"][0]
                .as_str()
                .unwrap()
                .as_bytes(),
            bytes
        );
    }

    #[test]
    fn non_utf8_bytes() {
        // "é" in UTF-8, then a lone Latin-1 "é" and a cut-off UTF-8 sequence.
        let bytes = b"\xc3\xa9 \xe9 \xe2\x82";
        let e = one_str(0x1000, Some(bytes), false);
        assert_eq!(
            text(&e, "f", &[Str]),
            r#"0.001234567 4242/4243 f("\xc3\xa9 \xe9 \xe2\x82")"#
        );
        assert_eq!(
            json(&e, "f", &[Str])["args"],
            json!(["é \u{fffd} \u{fffd}"])
        );
        let utf8 = one_str(0x1000, Some("naïve ✓".as_bytes()), false);
        assert_eq!(json(&utf8, "f", &[Str])["args"], json!(["naïve ✓"]));
    }

    #[test]
    fn truncated_strings_say_so() {
        let long = [b'x'; 64];
        let cut = one_str(0x1000, Some(&long), true);
        let xs = "x".repeat(64);
        assert_eq!(
            text(&cut, "f", &[Str]),
            format!(r#"0.001234567 4242/4243 f("{xs}"...)"#)
        );
        let mut two = cut.clone();
        two.args[2] = 0x2000;
        two.strings[2] = Some(b"short".to_vec());
        assert_eq!(
            json(&two, "f", &[Str, Int, Str]),
            json!({
                "time_ns": START + 1_234_567,
                "pid": 4242,
                "tid": 4243,
                "probe": "f",
                "args": [xs, -1, "short"],
                "truncated": [0],
            })
        );
        // Only `str` arguments can be cut: a stray flag on another is ignored.
        let mut stray = ev();
        stray.truncated = [true; 6];
        stray.strings[2] = Some(b"alpha".to_vec());
        assert_eq!(json(&stray, "f", &[Int, Int, Str])["truncated"], json!([2]));
        assert_eq!(text(&stray, "f", &[Int]), "0.001234567 4242/4243 f(100)");
    }

    #[test]
    fn labels_are_escaped_in_json() {
        let label = "ns::f(char const*) \"q\"";
        assert_eq!(json(&ev(), label, &[])["probe"], json!(label));
        assert_eq!(
            text(&ev(), label, &[]),
            format!("0.001234567 4242/4243 {label}()")
        );
    }

    #[test]
    fn lines_follow_one_another() {
        let mut out = Vec::new();
        write_json(&mut out, &ev(), "ev", &EV).unwrap();
        write_text(&mut out, &ev(), "ev", &EV, START).unwrap();
        write_json(&mut out, &ev(), "ev", &[]).unwrap();
        let out = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3);
        for line in [lines[0], lines[2]] {
            let v: Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["probe"], json!("ev"));
        }
        assert!(lines[1].starts_with("0.001234567 "));
    }
}
