//! The probe spec grammar: what `-p` accepts, as a typed [`Location`].

use std::fmt;
use std::str::FromStr;

use super::ProbeError;

/// Where a probe goes, as asked for: `SYMBOL`, `SYMBOL+OFFSET`, `0xADDR`
/// or a glob over function names.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Location {
    /// A function's entry, by its mangled or demangled name.
    Symbol(String),
    /// The instruction `offset` bytes into a function (written `0x1a` or `26`).
    SymbolOffset(String, u64),
    /// A link-time address, as `nm` prints it.
    Address(u64),
    /// The entry of every function whose name the glob matches.
    Glob(String),
}

impl Location {
    /// Whether it is a pattern, which may pass over what it cannot probe.
    #[must_use]
    pub fn is_glob(&self) -> bool {
        matches!(self, Location::Glob(_))
    }
}

impl FromStr for Location {
    type Err = ProbeError;

    /// Parses a spec; surrounding whitespace is ignored. A `+` suffix that
    /// looks numeric is an offset; any other (as in C++'s `operator+`) is
    /// part of the name.
    fn from_str(spec: &str) -> Result<Location, ProbeError> {
        let bad = |why: &str| ProbeError::BadSpec {
            spec: spec.to_string(),
            why: why.to_string(),
        };
        let s = spec.trim();
        if s.is_empty() {
            return Err(bad("empty"));
        }
        if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
            return u64::from_str_radix(hex, 16)
                .map(Location::Address)
                .map_err(|_| bad("not a hexadecimal address"));
        }
        if s.contains(['*', '?', '[']) {
            glob::Pattern::new(s).map_err(|e| bad(&format!("bad pattern: {e}")))?;
            return Ok(Location::Glob(s.to_string()));
        }
        if let Some((name, off)) = s.rsplit_once('+') {
            let looks_numeric = off.starts_with("0x")
                || off.starts_with("0X")
                || off.starts_with(|c: char| c.is_ascii_digit());
            if looks_numeric && !name.is_empty() {
                let parsed = match off.strip_prefix("0x").or_else(|| off.strip_prefix("0X")) {
                    Some(h) => u64::from_str_radix(h, 16).ok(),
                    None => off.parse().ok(),
                };
                return match parsed {
                    Some(offset) => Ok(Location::SymbolOffset(name.to_string(), offset)),
                    None => Err(bad("the offset is not a number (write 0x1a or 26)")),
                };
            }
        }
        Ok(Location::Symbol(s.to_string()))
    }
}

impl fmt::Display for Location {
    /// The spec that parses back to it (offsets in hexadecimal).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Symbol(name) | Location::Glob(name) => f.write_str(name),
            Location::SymbolOffset(name, offset) => write!(f, "{name}+{offset:#x}"),
            Location::Address(addr) => write!(f, "{addr:#x}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Location {
        s.parse().unwrap()
    }

    #[test]
    fn specs_parse() {
        assert_eq!(parse("main"), Location::Symbol("main".into()));
        assert_eq!(parse(" main "), Location::Symbol("main".into()));
        assert_eq!(
            parse("main+0x1a"),
            Location::SymbolOffset("main".into(), 0x1a)
        );
        assert_eq!(parse("main+26"), Location::SymbolOffset("main".into(), 26));
        assert_eq!(parse("0x401000"), Location::Address(0x401000));
        assert_eq!(parse("0X401000"), Location::Address(0x401000));
        assert_eq!(parse("PyList_*"), Location::Glob("PyList_*".into()));
        assert_eq!(parse("operator+"), Location::Symbol("operator+".into()));
        assert_eq!(parse("+1"), Location::Symbol("+1".into()));
    }

    #[test]
    fn bad_specs_say_why() {
        for (spec, why) in [
            ("", "empty"),
            ("  ", "empty"),
            ("0xzz", "not a hexadecimal address"),
            ("main+0xzz", "the offset is not a number (write 0x1a or 26)"),
            ("main+9zz", "the offset is not a number (write 0x1a or 26)"),
        ] {
            let e = spec.parse::<Location>().unwrap_err();
            assert_eq!(e.to_string(), format!("bad probe '{spec}': {why}"));
        }
        let e = "a[".parse::<Location>().unwrap_err().to_string();
        assert!(e.starts_with("bad probe 'a[': bad pattern: "), "{e}");
    }

    #[test]
    fn display_parses_back() {
        for l in [
            Location::Symbol("main".into()),
            Location::Symbol("operator+".into()),
            Location::SymbolOffset("main".into(), 26),
            Location::Address(0x401000),
            Location::Glob("Py*".into()),
        ] {
            assert_eq!(parse(&l.to_string()), l);
        }
        assert_eq!(Location::SymbolOffset("f".into(), 26).to_string(), "f+0x1a");
    }
}
