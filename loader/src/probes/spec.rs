//! The probe spec grammar: what `-p` accepts, as a typed [`Location`], and
//! what `--trace` accepts, a [`TraceSpec`]: a location and the types of the
//! arguments to show.

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

/// The registers that carry a function's first six integer arguments
/// (System V AMD64), in order: all a trace can read without knowing the
/// function's frame.
pub const ARG_REGISTERS: [&str; 6] = ["rdi", "rsi", "rdx", "rcx", "r8", "r9"];

/// How a traced argument is shown. The monitor reads every argument as the
/// raw 64-bit register; the type only decides how that value is shown, and
/// for `str`, whether the memory it points to is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
// The monitor will read specs of this type; nothing does yet.
#[allow(dead_code)]
pub enum ArgType {
    /// `int`: the register as a signed 64-bit integer, in decimal (an `int`
    /// argument's upper half is unspecified by the ABI: a negative 32-bit
    /// `int` may show as a large positive number).
    Int,
    /// `uint`: the register as an unsigned 64-bit integer, in decimal.
    Uint,
    /// `hex`: the register in hexadecimal, for flags, pointers and handles.
    Hex,
    /// `str`: a pointer to a NUL-terminated string, of which the monitor
    /// copies at most 64 bytes.
    Str,
}

impl ArgType {
    /// Every type, in the order messages list them.
    pub const ALL: [ArgType; 4] = [ArgType::Int, ArgType::Uint, ArgType::Hex, ArgType::Str];

    /// The word a spec names it by.
    #[must_use]
    pub fn word(self) -> &'static str {
        match self {
            ArgType::Int => "int",
            ArgType::Uint => "uint",
            ArgType::Hex => "hex",
            ArgType::Str => "str",
        }
    }

    /// The type a word names, exactly (case matters: `Int` is a C++ class,
    /// not a type word).
    fn from_word(word: &str) -> Option<ArgType> {
        ArgType::ALL.into_iter().find(|t| t.word() == word)
    }
}

/// Why a word is not a type, naming the ones that are.
fn unknown_type(word: &str) -> String {
    format!("unknown argument type '{word}' (the types are int, uint, hex and str)")
}

impl FromStr for ArgType {
    type Err = ProbeError;

    /// Parses `int`, `uint`, `hex` or `str`; surrounding whitespace is ignored.
    fn from_str(s: &str) -> Result<ArgType, ProbeError> {
        ArgType::from_word(s.trim()).ok_or_else(|| ProbeError::BadSpec {
            spec: s.to_string(),
            why: unknown_type(s.trim()),
        })
    }
}

impl fmt::Display for ArgType {
    /// The word that parses back to it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.word())
    }
}

/// What `--trace` asks for: `SPEC` or `SPEC(TYPE, …)`, where `SPEC` is a
/// [`Location`] and the list gives the types of the function's first
/// arguments (at most six, the ones passed in [`ARG_REGISTERS`]).
///
/// Demangled C++ names end in parentheses too (`ns::f(int, char const*)`,
/// `S::operator()()`), so the list is told from the name by one rule:
///
/// - The **last** parenthesised group of the spec is the argument list when
///   it is empty (`f()`: no arguments) or when its comma-separated items are
///   single words (letters, digits, `_`) or blank and at least one of them
///   is a type word (`int`, `uint`, `hex`, `str`). Everything before it is
///   the location.
/// - Otherwise the group is part of the name, and the whole spec is the
///   location, with no arguments: `ns::f(int, char const*)`, `f(Foo)`.
///
/// So `f(int)` traces `f` with one `int`, not the C++ function named
/// `f(int)`, and `ns::g()` traces `ns::g`, not the C++ function `ns::g()`.
/// To name such a function, give it its own list (empty or not):
/// `f(int)()`, `f(int)(int)`, `ns::g()()`. Once a group is read as a list,
/// a word in it that is not a type, a blank item, more than six items or
/// text after its `)` is an error (a C++ name like `S::f(int) const` is
/// written `S::f(int) const()`); the messages say how to name the function
/// instead. Parentheses anywhere in the spec must balance: no function's
/// name has unbalanced ones, so they are a typo.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
// The CLI and the monitor will use it; nothing does yet.
#[allow(dead_code)]
pub struct TraceSpec {
    /// Where the probe goes.
    pub location: Location,
    /// The types of the first `args.len()` integer arguments (at most six).
    pub args: Vec<ArgType>,
    /// `SPEC%return` or `SPEC%return(TYPE)` (the kernel's `uprobe_events`
    /// spelling): the function's returns are traced, not its entry, and
    /// the value returned is shown as this type (`hex` when none is
    /// given, as the kernel's `x64`). `args` is then empty: the arguments'
    /// registers hold other values by the return.
    pub ret: Option<ArgType>,
}

#[allow(dead_code)] // The CLI will use it for its "not found" hint.
impl TraceSpec {
    /// The other reading of the spec: its argument list taken as part of a
    /// demangled C++ name (`f(int)` → the function `f(int)`), as `Display`
    /// spaces such names. For a hint when the location names no function.
    /// `None` for an address or an offset, which a name cannot end.
    #[must_use]
    pub fn as_cpp_name(&self) -> Option<Location> {
        let with_list = |name: &str| format!("{name}({})", self.list());
        match &self.location {
            Location::Symbol(name) => Some(Location::Symbol(with_list(name))),
            Location::Glob(pattern) => Some(Location::Glob(with_list(pattern))),
            Location::SymbolOffset(..) | Location::Address(_) => None,
        }
    }

    /// The types, as the list between the parentheses writes them.
    fn list(&self) -> String {
        let words: Vec<&str> = self.args.iter().map(|t| t.word()).collect();
        words.join(", ")
    }
}

impl FromStr for TraceSpec {
    type Err = ProbeError;

    /// Parses `SPEC` or `SPEC(TYPE, …)` by the rule in [`TraceSpec`]'s
    /// documentation; whitespace around the spec, the parentheses and the
    /// commas is ignored.
    fn from_str(spec: &str) -> Result<TraceSpec, ProbeError> {
        let bad = |why: String| ProbeError::BadSpec {
            spec: spec.to_string(),
            why,
        };
        check_balanced(spec).map_err(bad)?;
        if let Some(at) = spec.rfind(RETURN) {
            return parse_return(&spec[..at], &spec[at + RETURN.len()..]).map_err(bad);
        }
        let s = spec.trim();
        let location = |text: &str| -> Result<Location, ProbeError> {
            text.parse().map_err(|e| match e {
                ProbeError::BadSpec { why, .. } => bad(why),
                other => other,
            })
        };
        let whole = || -> Result<TraceSpec, ProbeError> {
            Ok(TraceSpec {
                location: location(s)?,
                args: Vec::new(),
                ret: None,
            })
        };
        let Some((open, close)) = last_group(s) else {
            return whole();
        };
        let Some(items) = type_list(&s[open + 1..close]) else {
            return whole();
        };
        let (name, group, tail) = (&s[..open], &s[open..=close], s[close + 1..].trim());
        if !tail.is_empty() {
            return Err(bad(format!(
                "'{tail}' after the argument list '{group}' (the list ends the spec; \
                 if '{s}' is a C++ function's name, write '{s}()')"
            )));
        }
        if name.trim().is_empty() {
            return Err(bad(format!(
                "no function before the argument list '{group}'"
            )));
        }
        let mut args = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            if item.is_empty() {
                let between = match i {
                    0 => "'(' and ','",
                    _ if i + 1 == items.len() => "',' and ')'",
                    _ => "two commas",
                };
                return Err(bad(format!(
                    "argument {} has no type (nothing between {between})",
                    i + 1
                )));
            }
            match ArgType::from_word(item) {
                Some(t) => args.push(t),
                None => {
                    return Err(bad(format!(
                        "{} (if '{s}' is a C++ function's name, write '{s}()')",
                        unknown_type(item)
                    )))
                }
            }
        }
        if args.len() > ARG_REGISTERS.len() {
            return Err(bad(format!(
                "{} argument types, but only the first six integer arguments can be \
                 read (they are passed in {})",
                args.len(),
                ARG_REGISTERS.join(", ")
            )));
        }
        Ok(TraceSpec {
            location: location(name)?,
            args,
            ret: None,
        })
    }
}

/// What marks a return probe.
const RETURN: &str = "%return";

/// `WHERE%returnTAIL`: a return probe on the function `WHERE`, its value's
/// type in `TAIL` (`(TYPE)` or nothing); or why not.
fn parse_return(at: &str, tail: &str) -> Result<TraceSpec, String> {
    let at = at.trim();
    if at.is_empty() {
        return Err("no function before '%return'".into());
    }
    if at.contains(RETURN) {
        return Err("'%return' twice".into());
    }
    if let Some((open, close)) = last_group(at) {
        if close + 1 == at.len() && type_list(&at[open + 1..close]).is_some() {
            return Err(format!(
                "a return probe shows the value returned, not the arguments (their \
                 registers hold other values by then): trace '{}' and '{}%return' apart",
                at,
                &at[..open]
            ));
        }
    }
    let location: Location = at.parse().map_err(|e| match e {
        ProbeError::BadSpec { why, .. } => why,
        other => other.to_string(),
    })?;
    let tail = tail.trim();
    let ret = if tail.is_empty()
        || tail
            .strip_prefix('(')
            .and_then(|t| t.strip_suffix(')'))
            .is_some_and(|t| t.trim().is_empty())
    {
        ArgType::Hex
    } else {
        let word = tail
            .strip_prefix('(')
            .and_then(|t| t.strip_suffix(')'))
            .map(str::trim)
            .ok_or_else(|| {
                format!("'{tail}' after '%return' (write SPEC%return or SPEC%return(TYPE))")
            })?;
        if word.contains(',') {
            return Err(format!(
                "'%return({word})': a function returns one value, so one type"
            ));
        }
        ArgType::from_word(word).ok_or_else(|| unknown_type(word))?
    };
    Ok(TraceSpec {
        location,
        args: Vec::new(),
        ret: Some(ret),
    })
}

impl fmt::Display for TraceSpec {
    /// The spec that parses back to it (any spec parsing produced): the
    /// location, then the list when there are types, or `()` when the
    /// location itself has parentheses (else its own last group could be
    /// read as the list).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let location = self.location.to_string();
        f.write_str(&location)?;
        if let Some(ret) = self.ret {
            return write!(f, "{RETURN}({ret})");
        }
        if self.args.is_empty() && !location.contains(['(', ')']) {
            return Ok(());
        }
        write!(f, "({})", self.list())
    }
}

/// Checks that every parenthesis of `spec` is matched, saying which is not
/// (columns count characters from 1).
fn check_balanced(spec: &str) -> Result<(), String> {
    let mut open = Vec::new();
    for (column, c) in (1usize..).zip(spec.chars()) {
        match c {
            '(' => open.push(column),
            ')' if open.pop().is_none() => {
                return Err(format!(
                    "unbalanced parenthesis: the ')' at column {column} closes nothing"
                ))
            }
            _ => {}
        }
    }
    match open.first() {
        Some(column) => Err(format!(
            "unbalanced parenthesis: the '(' at column {column} is never closed"
        )),
        None => Ok(()),
    }
}

/// The byte offsets of the last top-level group's `(` and `)` in a spec
/// whose parentheses balance, if it has one.
fn last_group(s: &str) -> Option<(usize, usize)> {
    let close = s.rfind(')')?;
    let mut depth = 0usize;
    for (i, c) in s[..close].char_indices().rev() {
        match c {
            ')' => depth += 1,
            '(' if depth == 0 => return Some((i, close)),
            '(' => depth -= 1,
            _ => {}
        }
    }
    None
}

/// The trimmed items of a group's inside, when it reads as an argument list
/// (see [`TraceSpec`]): none for a blank inside; else single words or blanks
/// with at least one type word among them.
fn type_list(inside: &str) -> Option<Vec<&str>> {
    if inside.trim().is_empty() {
        return Some(Vec::new());
    }
    let items: Vec<&str> = inside.split(',').map(str::trim).collect();
    let words = items
        .iter()
        .all(|w| w.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
    let typed = items.iter().any(|w| ArgType::from_word(w).is_some());
    (words && typed).then_some(items)
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

    fn trace(s: &str) -> TraceSpec {
        s.parse().unwrap()
    }

    fn traced(location: Location, args: &[ArgType]) -> TraceSpec {
        TraceSpec {
            location,
            args: args.to_vec(),
            ret: None,
        }
    }

    #[test]
    fn return_probes_take_the_kernel_spelling_and_one_type() {
        let ret = |location, t| TraceSpec {
            location,
            args: Vec::new(),
            ret: Some(t),
        };
        assert_eq!(trace("f%return"), ret(sym("f"), ArgType::Hex));
        assert_eq!(trace("f%return( )"), ret(sym("f"), ArgType::Hex));
        assert_eq!(trace(" f%return( int ) "), ret(sym("f"), ArgType::Int));
        assert_eq!(
            trace("getenv%return(str)"),
            ret(sym("getenv"), ArgType::Str)
        );
        assert_eq!(
            trace("Py*%return(uint)"),
            ret(Location::Glob("Py*".into()), ArgType::Uint)
        );
        // A C++ name's own parentheses stay in the name.
        assert_eq!(
            trace("ns::f(Foo)%return"),
            ret(sym("ns::f(Foo)"), ArgType::Hex)
        );
        // Display parses back.
        for s in ["f%return(int)", "ns::f(Foo)%return(hex)"] {
            assert_eq!(trace(s).to_string(), s);
        }
    }

    fn sym(name: &str) -> Location {
        Location::Symbol(name.into())
    }

    /// The message of a spec that must not parse.
    fn trace_error(spec: &str) -> String {
        match spec.parse::<TraceSpec>() {
            Ok(t) => panic!("'{spec}' parsed as {t:?}"),
            Err(e @ ProbeError::BadSpec { .. }) => e.to_string(),
            Err(e) => panic!("'{spec}': not a BadSpec: {e}"),
        }
    }

    use ArgType::{Hex, Int, Str, Uint};

    #[test]
    fn arg_types_parse_and_display() {
        for (word, t) in [("int", Int), ("uint", Uint), ("hex", Hex), ("str", Str)] {
            assert_eq!(word.parse::<ArgType>().unwrap(), t);
            assert_eq!(format!(" {word}\t").parse::<ArgType>().unwrap(), t);
            assert_eq!(t.to_string(), word);
        }
        for word in ["", "Int", "char", "string", "int int", "u64"] {
            let e = word.parse::<ArgType>().unwrap_err().to_string();
            assert_eq!(
                e,
                format!(
                    "bad probe '{word}': unknown argument type '{}' \
                     (the types are int, uint, hex and str)",
                    word.trim()
                )
            );
        }
    }

    #[test]
    fn trace_specs_without_a_list_are_locations() {
        assert_eq!(trace("ev"), traced(sym("ev"), &[]));
        assert_eq!(trace(" ev "), traced(sym("ev"), &[]));
        assert_eq!(
            trace("f+0x10"),
            traced(Location::SymbolOffset("f".into(), 0x10), &[])
        );
        assert_eq!(trace("0x401000"), traced(Location::Address(0x401000), &[]));
        assert_eq!(trace("Py*"), traced(Location::Glob("Py*".into()), &[]));
    }

    #[test]
    fn trace_lists_give_the_types() {
        assert_eq!(trace("fopen(str, str)"), traced(sym("fopen"), &[Str, Str]));
        assert_eq!(
            trace("ev(int, int, str, uint, hex, int)"),
            traced(sym("ev"), &[Int, Int, Str, Uint, Hex, Int])
        );
        assert_eq!(trace("f()"), traced(sym("f"), &[]));
        assert_eq!(trace("f( )"), traced(sym("f"), &[]));
        assert_eq!(
            trace("  f ( int ,str,\thex )  "),
            traced(sym("f"), &[Int, Str, Hex])
        );
        assert_eq!(
            trace("f+0x10(hex)"),
            traced(Location::SymbolOffset("f".into(), 0x10), &[Hex])
        );
        assert_eq!(
            trace("0x401000(uint)"),
            traced(Location::Address(0x401000), &[Uint])
        );
        assert_eq!(
            trace("PyList_*(hex, hex)"),
            traced(Location::Glob("PyList_*".into()), &[Hex, Hex])
        );
    }

    #[test]
    fn demangled_names_keep_their_parentheses() {
        for name in [
            "ns::f(int, char const*)",
            "ns::f(char const*)",
            "f(Foo)",
            "f(unsigned int)",
            "ns::f(void (*)(int))",
            "S::operator()(std::string const&)",
            "(anonymous namespace)::helper(Foo)",
            "f(char)",
        ] {
            // Whole, as `-p` reads it (a `*` makes it a glob).
            let whole = traced(name.parse().unwrap(), &[]);
            assert_eq!(trace(name), whole, "{name}");
        }
    }

    #[test]
    fn the_last_group_of_type_words_is_the_list() {
        // Ambiguous: the list wins, and the name takes its own list.
        assert_eq!(trace("f(int)"), traced(sym("f"), &[Int]));
        assert_eq!(trace("ns::g()"), traced(sym("ns::g"), &[]));
        assert_eq!(trace("f(int)()"), traced(sym("f(int)"), &[]));
        assert_eq!(trace("f(int)(int)"), traced(sym("f(int)"), &[Int]));
        assert_eq!(trace("ns::g()()"), traced(sym("ns::g()"), &[]));
        assert_eq!(
            trace("S::operator()()()"),
            traced(sym("S::operator()()"), &[])
        );
        assert_eq!(
            trace("S::operator()(int, hex)"),
            traced(sym("S::operator()"), &[Int, Hex])
        );
        assert_eq!(
            trace("ns::f(int, char const&)(str)"),
            traced(sym("ns::f(int, char const&)"), &[Str])
        );
        assert_eq!(
            trace("S::f(int) const()"),
            traced(sym("S::f(int) const"), &[])
        );
        assert_eq!(
            trace("ns::f(int, char const&)+0x10(hex)"),
            traced(
                Location::SymbolOffset("ns::f(int, char const&)".into(), 0x10),
                &[Hex]
            )
        );
    }

    #[test]
    fn bad_trace_specs_say_why() {
        let types = "(the types are int, uint, hex and str)";
        for (spec, why) in [
            (
                "f(int, strr)",
                format!("unknown argument type 'strr' {types} (if 'f(int, strr)' is a C++ function's name, write 'f(int, strr)()')"),
            ),
            (
                "f(int, char)",
                format!("unknown argument type 'char' {types} (if 'f(int, char)' is a C++ function's name, write 'f(int, char)()')"),
            ),
            (
                "f(int, int, int, int, int, int, int)",
                "7 argument types, but only the first six integer arguments can be read \
                 (they are passed in rdi, rsi, rdx, rcx, r8, r9)"
                    .into(),
            ),
            (
                "f(int, str",
                "unbalanced parenthesis: the '(' at column 2 is never closed".into(),
            ),
            (
                "f int, str)",
                "unbalanced parenthesis: the ')' at column 11 closes nothing".into(),
            ),
            (
                "f(int))",
                "unbalanced parenthesis: the ')' at column 7 closes nothing".into(),
            ),
            (
                "ns::f(char const*",
                "unbalanced parenthesis: the '(' at column 6 is never closed".into(),
            ),
            (
                "f(int,, str)",
                "argument 2 has no type (nothing between two commas)".into(),
            ),
            (
                "f(, int)",
                "argument 1 has no type (nothing between '(' and ',')".into(),
            ),
            (
                "f(int, )",
                "argument 2 has no type (nothing between ',' and ')')".into(),
            ),
            (
                "f(int, str) x",
                "'x' after the argument list '(int, str)' (the list ends the spec; \
                 if 'f(int, str) x' is a C++ function's name, write 'f(int, str) x()')"
                    .into(),
            ),
            (
                "S::f(int) const",
                "'const' after the argument list '(int)' (the list ends the spec; \
                 if 'S::f(int) const' is a C++ function's name, write 'S::f(int) const()')"
                    .into(),
            ),
            ("(int)", "no function before the argument list '(int)'".into()),
            (" ()", "no function before the argument list '()'".into()),
            ("", "empty".into()),
            ("0xzz(int)", "not a hexadecimal address".into()),
            (
                "f+0xzz(int)",
                "the offset is not a number (write 0x1a or 26)".into(),
            ),
            ("%return", "no function before '%return'".into()),
            ("f%return(int)%return", "'%return' twice".into()),
            (
                "f%return(int, int)",
                "'%return(int, int)': a function returns one value, so one type".into(),
            ),
            (
                "f%return(long)",
                "unknown argument type 'long' (the types are int, uint, hex and str)".into(),
            ),
            (
                "f%return x",
                "'x' after '%return' (write SPEC%return or SPEC%return(TYPE))".into(),
            ),
            (
                "f(int)%return",
                "a return probe shows the value returned, not the arguments (their \
                 registers hold other values by then): trace 'f(int)' and 'f%return' apart"
                    .into(),
            ),
        ] {
            assert_eq!(trace_error(spec), format!("bad probe '{spec}': {why}"));
        }
        let e = trace_error("a[(int)");
        assert!(e.starts_with("bad probe 'a[(int)': bad pattern: "), "{e}");
    }

    #[test]
    fn words_that_are_not_types_leave_a_name() {
        // No type word in the group: a C++ name (which resolution may not find).
        assert_eq!(trace("f(strr)"), traced(sym("f(strr)"), &[]));
        assert_eq!(trace("f(Int)"), traced(sym("f(Int)"), &[]));
        assert_eq!(trace("f(,)"), traced(sym("f(,)"), &[]));
        // A multi-word item is a C++ type.
        assert_eq!(trace("f(int str)"), traced(sym("f(int str)"), &[]));
    }

    #[test]
    fn trace_display_parses_back() {
        for t in [
            traced(sym("ev"), &[]),
            traced(sym("fopen"), &[Str, Str]),
            traced(sym("ev"), &[Int, Int, Str, Uint, Hex, Int]),
            traced(sym("f(int)"), &[]),
            traced(sym("f(int)"), &[Int]),
            traced(sym("ns::g()"), &[]),
            traced(sym("S::f(int) const"), &[]),
            traced(sym("ns::f(int, char const&)"), &[]),
            traced(Location::Glob("ns::f(int, char const*)".into()), &[]),
            traced(sym("S::operator()()"), &[Hex]),
            traced(Location::SymbolOffset("f".into(), 26), &[Hex]),
            traced(Location::SymbolOffset("f(int)".into(), 26), &[]),
            traced(Location::Address(0x401000), &[Uint]),
            traced(Location::Glob("Py*".into()), &[]),
            traced(Location::Glob("Py*".into()), &[Hex, Str]),
        ] {
            assert_eq!(trace(&t.to_string()), t, "{t}");
        }
        assert_eq!(trace("fopen( str,str )").to_string(), "fopen(str, str)");
        assert_eq!(trace("f()").to_string(), "f");
        assert_eq!(trace("f(int)()").to_string(), "f(int)()");
    }

    /// Every spec of up to four pieces either is refused or reads back the
    /// same from its `Display`: no piece of grammar can panic or lose a part.
    #[test]
    fn any_spec_parses_back_or_is_refused() {
        const PIECES: [&str; 12] = [
            "(", ")", ",", " ", "f", "int", "str", "char", "*", "+0x1", "0x1", "()",
        ];
        let mut specs = vec![String::new()];
        for _ in 0..4 {
            let longer: Vec<String> = specs
                .iter()
                .flat_map(|s| PIECES.iter().map(move |p| format!("{s}{p}")))
                .collect();
            specs.extend(longer);
        }
        let mut parsed = 0;
        for spec in &specs {
            match spec.parse::<TraceSpec>() {
                Ok(t) => {
                    parsed += 1;
                    assert!(t.args.len() <= 6);
                    assert_eq!(trace(&t.to_string()), t, "'{spec}' shown as '{t}'");
                }
                Err(ProbeError::BadSpec { .. }) => {}
                Err(e) => panic!("'{spec}': {e}"),
            }
        }
        assert!(parsed > 1000, "{parsed} of {} parsed", specs.len());
    }

    #[test]
    fn the_cpp_reading_keeps_the_list_in_the_name() {
        assert_eq!(trace("f(int)").as_cpp_name(), Some(sym("f(int)")));
        assert_eq!(trace("ns::g()").as_cpp_name(), Some(sym("ns::g()")));
        assert_eq!(trace("f(int,str)").as_cpp_name(), Some(sym("f(int, str)")));
        assert_eq!(
            trace("ns::*(int)").as_cpp_name(),
            Some(Location::Glob("ns::*(int)".into()))
        );
        assert_eq!(trace("f+0x10(int)").as_cpp_name(), None);
        assert_eq!(trace("0x10(int)").as_cpp_name(), None);
    }
}
