//! A flat profile from sampled program counters: each sample attributed to
//! the function it was in (inlined functions included, from the DWARF), to
//! the symbol the code was compiled into, and to its source line; printed as
//! tables of the top entries (`cargo xtask profile`).

use crate::symbolize::Symbolizer;
use std::collections::BTreeMap;

/// Where one sample was, as far as the ELFs tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    /// `kernel` or `user`; `?` when no ELF knows the address.
    pub image: &'static str,
    /// The symbol (the function the code was compiled into).
    pub symbol: String,
    /// The innermost source frames' functions, innermost first (inlined ones too).
    pub functions: Vec<String>,
    /// `file:line` of the innermost frame.
    pub line: Option<String>,
}

/// The place of `pc`: looked up in `kernel`, then in `user`.
pub fn place(pc: u64, kernel: &Symbolizer, user: Option<&Symbolizer>) -> Place {
    for (image, s) in [("kernel", Some(kernel)), ("user", user)] {
        let Some(s) = s else { continue };
        let Some(sym) = s.lookup(pc) else { continue };
        let symbol = sym.rsplit_once('+').map_or(sym.as_str(), |(name, _)| name).to_owned();
        let frames = s.frames(pc);
        let mut functions: Vec<String> = frames.iter().map(|f| f.function.clone()).collect();
        if functions.is_empty() {
            functions.push(symbol.clone());
        }
        let line = frames.first().and_then(|f| Some(format!("{}:{}", f.file.as_ref()?, f.line)));
        return Place { image, symbol, functions, line };
    }
    Place { image: "?", symbol: format!("[unknown {pc:#x}]"), functions: Vec::new(), line: None }
}

/// Counts by key, highest first (ties by key), the top `n`.
fn top(counts: BTreeMap<String, usize>, n: usize) -> Vec<(String, usize)> {
    let mut v: Vec<(String, usize)> = counts.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v.truncate(n);
    v
}

/// The profile of `places` as text: totals, then the top `n` by self
/// function (innermost frame), by inclusive function (anywhere in the inline
/// stack), by symbol and by source line.
pub fn report(places: &[Place], n: usize) -> String {
    use std::fmt::Write;
    let total = places.len().max(1);
    let mut out = String::new();
    let count = |image: &str| places.iter().filter(|p| p.image == image).count();
    let _ = writeln!(
        out,
        "profile: {} samples: kernel {}, user {}, unknown {}",
        places.len(),
        count("kernel"),
        count("user"),
        count("?")
    );
    let mut tables: [(&str, BTreeMap<String, usize>); 4] = [
        ("self (innermost function, inlined ones included)", BTreeMap::new()),
        ("inclusive (anywhere in the inline stack)", BTreeMap::new()),
        ("symbol (the function the code was compiled into)", BTreeMap::new()),
        ("line (innermost frame)", BTreeMap::new()),
    ];
    for p in places {
        let own = p.functions.first().cloned().unwrap_or_else(|| p.symbol.clone());
        *tables[0].1.entry(own).or_default() += 1;
        let mut seen: Vec<&String> = Vec::new();
        for f in &p.functions {
            if !seen.contains(&f) {
                seen.push(f);
                *tables[1].1.entry(f.clone()).or_default() += 1;
            }
        }
        *tables[2].1.entry(p.symbol.clone()).or_default() += 1;
        if let Some(l) = &p.line {
            *tables[3].1.entry(l.clone()).or_default() += 1;
        }
    }
    for (title, counts) in tables {
        let _ = writeln!(out, "profile: by {title}:");
        for (key, c) in top(counts, n) {
            let _ = writeln!(out, "profile: {:>6} {:>5.1}%  {key}", c, 100.0 * c as f64 / total as f64);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(symbol: &str, functions: &[&str], line: &str) -> Place {
        Place {
            image: "kernel",
            symbol: symbol.into(),
            functions: functions.iter().map(|s| (*s).to_owned()).collect(),
            line: Some(line.into()),
        }
    }

    #[test]
    fn samples_are_counted_by_self_inclusive_symbol_and_line() {
        let places = vec![
            p("outer", &["inner", "outer"], "a.rs:1"),
            p("outer", &["inner", "outer"], "a.rs:1"),
            p("outer", &["outer"], "a.rs:9"),
            p("other", &["recursive", "recursive", "other"], "b.rs:2"),
            Place { image: "?", symbol: "[unknown 0x10]".into(), functions: vec![], line: None },
        ];
        let r = report(&places, 10);
        assert!(r.contains("profile: 5 samples: kernel 4, user 0, unknown 1"), "{r}");
        let section = |title: &str| -> Vec<String> {
            r.split("profile: by ")
                .find(|s| s.starts_with(title))
                .map(|s| {
                    s.lines().skip(1).map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" ")).collect()
                })
                .unwrap_or_default()
        };
        assert_eq!(section("self")[0], "2 40.0% inner");
        assert!(section("self").contains(&"1 20.0% [unknown 0x10]".to_owned()));
        // Inclusive: outer is in three stacks, recursive counted once per sample.
        assert_eq!(section("inclusive")[0], "3 60.0% outer");
        assert!(section("inclusive").contains(&"1 20.0% recursive".to_owned()));
        assert_eq!(section("symbol")[0], "3 60.0% outer");
        assert_eq!(section("line")[0], "2 40.0% a.rs:1");
    }

    #[test]
    fn top_keeps_the_highest_counts_and_breaks_ties_by_name() {
        let counts: BTreeMap<String, usize> =
            [("b", 2), ("a", 2), ("c", 5), ("d", 1)].map(|(k, v)| (k.into(), v)).into();
        assert_eq!(top(counts, 3), vec![("c".into(), 5), ("a".into(), 2), ("b".into(), 2)]);
    }
}
