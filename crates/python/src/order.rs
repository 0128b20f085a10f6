//! Lays out first, in each core module, the functions a start of Python
//! goes through.
//!
//! wasmtime compiles a module's functions into its code in the order of
//! their indices, and the compiled file is mapped from capsa's cache on
//! every run. One `capsa run hello.py` enters about 900 of CPython's
//! 13,600 functions, 1.1 MB of code spread over all 12 MB of it; the kernel
//! maps the file in 64 KiB pieces or whole large folios, so a run counted
//! nearly all 12 MB. Renumbering the module so that those functions come
//! first, in the order first entered, puts them in one stretch.
//!
//! Functions are found by the names in the module's name section (a C
//! function's name), listed in `startup-functions.txt` and made by
//! `scripts/startup-order`: names stay the same from build to build where
//! indices do not. The list is read from the compiled code's symbols, which
//! wasmtime names after the name section but cleaned (see [`symbol`]), so a
//! module's names are compared cleaned the same way. A name the module does
//! not have is skipped; one it has twice (two static functions, or two long
//! names cut to the same start) moves both. Behaviour does not change:
//! every reference to a function (calls, `ref.func`, element segments,
//! exports, names) is renumbered with it, and the function table, which is
//! what the memory snapshot's function pointers index, keeps its contents.
//!
//! Anything this pass does not follow (an unparsable module, a name of a
//! function the module does not have, a custom section other than names,
//! producers and target features, which might hold function indices or code
//! offsets, a result that does not validate) leaves the component as it
//! was.

use crate::component::{Wiring, rebuild};
use std::collections::HashMap;
use wasm_encoder::reencode::{self, Reencode};
use wasmparser::{KnownCustom, Name, Parser, Payload, TypeRef};

/// The names of the functions a start goes through, in the order first
/// entered (one per line; `#` starts a comment).
pub const STARTUP_FUNCTIONS: &str = include_str!("../startup-functions.txt");

/// The names listed in `text` (in the format of [`STARTUP_FUNCTIONS`]).
pub fn listed(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

/// A function's name as wasmtime writes it in the compiled code's symbols
/// (`clean_symbol` in wasmtime's `compile.rs`): cut to 96 characters, and
/// in a name with any character that is not graphic ASCII, each run of such
/// characters and `?`s becomes one `?` first.
pub fn symbol(name: &str) -> String {
    const MAX: usize = 96;
    if name.chars().all(|c| c.is_ascii_graphic()) {
        return name[..name.len().min(MAX)].to_string();
    }
    let mut out = String::with_capacity(name.len().min(MAX));
    let mut last = '\0';
    for c in name.chars() {
        let c = if c.is_ascii_graphic() { c } else { '?' };
        if !(c == '?' && last == '?') {
            out.push(c);
        }
        last = c;
    }
    out.chars().take(MAX).collect()
}

/// What ordering did, for tests and the build's report.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Ordered {
    /// Functions now laid out first.
    pub moved: usize,
    /// Of the names listed, those found.
    pub found: usize,
}

/// The component with the functions named in `first` laid out first in
/// each core module that has them, in that order; `None` where it is left
/// as it was.
pub fn order_functions(component: &[u8], first: &[&str]) -> Option<(Vec<u8>, Ordered)> {
    let wiring = Wiring::read(component)?;
    let mut stats = Ordered::default();
    let out = rebuild(component, &wiring, |_, module| {
        let Some((bytes, moved, found)) = order_module(module, first) else {
            return Some(None);
        };
        stats.moved += moved;
        stats.found += found;
        Some(Some(bytes))
    })?;
    (stats.moved > 0).then_some((out, stats))
}

/// `module` renumbered with the functions named in `first` first: the
/// module, how many functions moved and how many names were found, or
/// `None` if nothing would change (or it cannot be followed).
fn order_module(module: &[u8], first: &[&str]) -> Option<(Vec<u8>, usize, usize)> {
    let mut imported = 0u32;
    let mut defined = 0u32;
    let mut by_name: HashMap<String, Vec<u32>> = HashMap::new();
    for payload in Parser::new(0).parse_all(module) {
        match payload.ok()? {
            Payload::ImportSection(r) => {
                for import in r.into_imports() {
                    if matches!(import.ok()?.ty, TypeRef::Func(_) | TypeRef::FuncExact(_)) {
                        imported += 1;
                    }
                }
            }
            Payload::FunctionSection(r) => defined = r.count(),
            Payload::CustomSection(c) => {
                if !matches!(c.name(), "name" | "producers" | "target_features") {
                    return None;
                }
                if let KnownCustom::Name(names) = c.as_known() {
                    for name in names {
                        if let Name::Function(map) = name.ok()? {
                            for n in map {
                                let n = n.ok()?;
                                by_name.entry(symbol(n.name)).or_default().push(n.index);
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    // Defined functions by position among the defined, listed first.
    let mut placed = vec![false; defined as usize];
    let mut order = Vec::with_capacity(defined as usize);
    let mut found = 0;
    for name in first {
        let Some(indices) = by_name.get(*name) else {
            continue;
        };
        found += 1;
        for &f in indices {
            let Some(local) = f.checked_sub(imported).filter(|l| *l < defined) else {
                continue;
            };
            if !std::mem::replace(&mut placed[local as usize], true) {
                order.push(local);
            }
        }
    }
    let moved = order.len();
    order.extend((0..defined).filter(|l| !placed[*l as usize]));
    if order.iter().enumerate().all(|(i, l)| i as u32 == *l) {
        return None;
    }
    let mut position = vec![0u32; defined as usize];
    for (i, l) in order.iter().enumerate() {
        position[*l as usize] = i as u32;
    }
    let mut r = Renumber {
        imported,
        position,
        order,
    };
    let mut out = wasm_encoder::Module::new();
    reencode::utils::parse_core_module(&mut r, &mut out, Parser::new(0), module).ok()?;
    // `rebuild` validates the whole component this goes into.
    Some((out.finish(), moved, found))
}

/// A module's defined functions put in `order` (positions among the
/// defined), every reference renumbered.
struct Renumber {
    imported: u32,
    /// The new position of each defined function.
    position: Vec<u32>,
    /// The old position of each new one.
    order: Vec<u32>,
}

/// A function index past the module's functions (which a name section,
/// which validation does not check, may hold).
#[derive(Debug)]
struct NoSuchFunction;

/// `items` (one per defined function) in `order`.
fn in_order<'a, T>(
    order: &[u32],
    items: &'a [T],
) -> Result<Vec<&'a T>, reencode::Error<NoSuchFunction>> {
    order
        .iter()
        .map(|l| {
            items
                .get(*l as usize)
                .ok_or(reencode::Error::UserError(NoSuchFunction))
        })
        .collect()
}

impl Reencode for Renumber {
    type Error = NoSuchFunction;

    fn function_index(&mut self, f: u32) -> Result<u32, reencode::Error<Self::Error>> {
        match f.checked_sub(self.imported) {
            Some(l) => match self.position.get(l as usize) {
                Some(p) => Ok(self.imported + p),
                None => Err(reencode::Error::UserError(NoSuchFunction)),
            },
            None => Ok(f),
        }
    }

    fn parse_function_section(
        &mut self,
        functions: &mut wasm_encoder::FunctionSection,
        section: wasmparser::FunctionSectionReader<'_>,
    ) -> Result<(), reencode::Error<Self::Error>> {
        let types = section.into_iter().collect::<Result<Vec<_>, _>>()?;
        for ty in in_order(&self.order, &types)? {
            functions.function(self.type_index(*ty)?);
        }
        Ok(())
    }

    fn parse_code_section(
        &mut self,
        code: &mut wasm_encoder::CodeSection,
        section: wasmparser::CodeSectionReader<'_>,
    ) -> Result<(), reencode::Error<Self::Error>> {
        let bodies = section.into_iter().collect::<Result<Vec<_>, _>>()?;
        for body in in_order(&self.order, &bodies)? {
            self.parse_function_body(code, body.clone())?;
        }
        Ok(())
    }

    /// The name section's maps are by index, in increasing order.
    fn parse_custom_name_subsection(
        &mut self,
        names: &mut wasm_encoder::NameSection,
        section: wasmparser::Name<'_>,
    ) -> Result<(), reencode::Error<Self::Error>> {
        match section {
            Name::Function(map) => {
                let mut all = Vec::new();
                for n in map {
                    let n = n?;
                    all.push((self.function_index(n.index)?, n.name));
                }
                all.sort_by_key(|(i, _)| *i);
                let mut out = wasm_encoder::NameMap::new();
                for (i, n) in all {
                    out.append(i, n);
                }
                names.functions(&out);
            }
            Name::Local(ref map) | Name::Label(ref map) => {
                let local = matches!(section, Name::Local(_));
                let map = map.clone();
                let mut all = Vec::new();
                for n in map {
                    let n = n?;
                    let mut inner = wasm_encoder::NameMap::new();
                    for m in n.names {
                        let m = m?;
                        inner.append(m.index, m.name);
                    }
                    all.push((self.function_index(n.index)?, inner));
                }
                all.sort_by_key(|(i, _)| *i);
                let mut out = wasm_encoder::IndirectNameMap::new();
                for (i, inner) in &all {
                    out.append(*i, inner);
                }
                if local {
                    names.locals(&out);
                } else {
                    names.labels(&out);
                }
            }
            other => reencode::utils::parse_custom_name_subsection(self, names, other)?,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A component whose module calls, exports and puts in its table
    /// functions that the test moves, with local names and an imported
    /// function.
    fn component() -> Vec<u8> {
        wat::parse_str(
            r#"(component
            (import "tick" (func $tick (result u32)))
            (core func $tick_lowered (canon lower (func $tick)))
            (core instance $host (export "tick" (func $tick_lowered)))
            (core module $m
                (import "host" "tick" (func $tick (result i32)))
                (type $bin (func (param i32 i32) (result i32)))
                (table 2 funcref)
                (elem (i32.const 0) func $sub $mul)
                (func $add (param i32 i32) (result i32) local.get 0 local.get 1 i32.add)
                (func $sub (@name "sub tract") (param i32 i32) (result i32)
                    local.get 0 local.get 1 i32.sub)
                (func $mul (param i32 i32) (result i32) local.get 0 local.get 1 i32.mul)
                (func $run (export "run") (result i32)
                    (local $acc i32)
                    i32.const 7 i32.const 5 call $add
                    i32.const 100 i32.mul local.set $acc
                    i32.const 9 i32.const 4 i32.const 0 call_indirect (type $bin)
                    i32.const 10 i32.mul local.get $acc i32.add local.set $acc
                    i32.const 3 i32.const 2 i32.const 1 call_indirect (type $bin)
                    local.get $acc i32.add
                    call $tick i32.const 1000 i32.mul i32.add
                    ref.func $mul drop))
            (core instance $i (instantiate $m (with "host" (instance $host))))
            (alias core export $i "run" (core func $run))
            (func (export "run") (result u32) (canon lift (core func $run))))"#,
        )
        .unwrap()
    }

    fn run(component: &[u8]) -> u32 {
        let engine = wasmtime::Engine::default();
        let component = wasmtime::component::Component::new(&engine, component).unwrap();
        let mut linker = wasmtime::component::Linker::<()>::new(&engine);
        linker
            .root()
            .func_wrap("tick", |_, (): ()| Ok((4u32,)))
            .unwrap();
        let mut store = wasmtime::Store::new(&engine, ());
        let instance = linker.instantiate(&mut store, &component).unwrap();
        let f = instance
            .get_typed_func::<(), (u32,)>(&mut store, "run")
            .unwrap();
        f.call(&mut store, ()).unwrap().0
    }

    /// The module's defined function names, in index order.
    fn names(component: &[u8]) -> Vec<String> {
        let wiring = Wiring::read(component).unwrap();
        let module = &component[wiring.modules[0].clone()];
        let mut out = Vec::new();
        for payload in Parser::new(0).parse_all(module) {
            if let Payload::CustomSection(c) = payload.unwrap()
                && let KnownCustom::Name(names) = c.as_known()
            {
                for name in names {
                    if let Name::Function(map) = name.unwrap() {
                        out = map
                            .into_iter()
                            .map(|n| n.unwrap().name.to_string())
                            .collect();
                    }
                }
            }
        }
        out
    }

    #[test]
    fn the_listed_functions_come_first_and_it_behaves_the_same() {
        let original = component();
        // 12*100 + 5*10 + 6 + 4*1000
        assert_eq!(run(&original), 5256);
        assert_eq!(names(&original), ["tick", "add", "sub tract", "mul", "run"]);
        let (ordered, stats) =
            order_functions(&original, &["run", "absent", "mul", "tick"]).unwrap();
        assert_eq!(stats, Ordered { moved: 2, found: 3 });
        assert_eq!(
            names(&ordered),
            ["tick", "run", "mul", "add", "sub tract"],
            "an import keeps its index; the rest keep their order"
        );
        assert_eq!(run(&ordered), 5256);
        // A space is listed as nm shows it.
        let (ordered, _) = order_functions(&original, &["sub?tract"]).unwrap();
        assert_eq!(names(&ordered), ["tick", "sub tract", "add", "mul", "run"]);
        assert_eq!(run(&ordered), 5256);
    }

    #[test]
    fn nothing_listed_or_already_first_leaves_it_as_it_was() {
        let original = component();
        assert!(order_functions(&original, &[]).is_none());
        assert!(order_functions(&original, &["absent"]).is_none());
        assert!(order_functions(&original, &["add", "sub?tract"]).is_none());
        assert!(order_functions(b"not wasm", &["add"]).is_none());
    }

    /// A core module of three functions named "a", "b" and "c", with `extra`
    /// (id, bytes) sections after.
    fn module(extra: &[(u8, Vec<u8>)]) -> Vec<u8> {
        let mut m = wasm_encoder::Module::new();
        let mut types = wasm_encoder::TypeSection::new();
        types.ty().function([], []);
        m.section(&types);
        let mut funcs = wasm_encoder::FunctionSection::new();
        let mut code = wasm_encoder::CodeSection::new();
        for _ in 0..3 {
            funcs.function(0);
            let mut f = wasm_encoder::Function::new([]);
            f.instructions().end();
            code.function(&f);
        }
        m.section(&funcs);
        m.section(&code);
        let mut out = m.finish();
        for (id, data) in extra {
            crate::component::push_section(&mut out, *id, data);
        }
        out
    }

    /// A name section's function names, `names` (index, name).
    fn name_section(names: &[(u32, &str)]) -> Vec<u8> {
        let mut map = wasm_encoder::NameMap::new();
        for (i, n) in names {
            map.append(*i, n);
        }
        let mut section = wasm_encoder::NameSection::new();
        section.functions(&map);
        let mut m = wasm_encoder::Module::new();
        m.section(&section);
        // The section's payload, after the module header, id and size.
        let bytes = m.finish();
        let (_, rest) = bytes.split_at(9);
        let mut size = 0;
        while rest[size] & 0x80 != 0 {
            size += 1;
        }
        rest[size + 1..].to_vec()
    }

    #[test]
    fn what_it_cannot_follow_is_left_as_it_was() {
        let names = name_section(&[(0, "a"), (1, "b"), (2, "c")]);
        let plain = module(&[(0, names)]);
        let (_, moved, found) = order_module(&plain, &["c"]).unwrap();
        assert_eq!((moved, found), (1, 1));
        // A name of a function the module does not have: validation does
        // not look at names, and renumbering it must not panic.
        let beyond = name_section(&[(0, "a"), (1, "b"), (2, "c"), (9, "z")]);
        let module_beyond = module(&[(0, beyond)]);
        wasmparser::Validator::new()
            .validate_all(&module_beyond)
            .expect("valid");
        assert!(order_module(&module_beyond, &["c"]).is_none());
        // A custom section that might hold function indices or code offsets.
        let name = b"metadata.code.branch_hint";
        let mut branch_hints = vec![name.len() as u8];
        branch_hints.extend_from_slice(name);
        branch_hints.push(0);
        let hinted = module(&[(0, name_section(&[(2, "c")])), (0, branch_hints)]);
        assert!(order_module(&hinted, &["c"]).is_none());
    }

    #[test]
    fn names_compare_as_wasmtime_writes_its_symbols() {
        assert_eq!(symbol("PyList_New"), "PyList_New");
        assert_eq!(symbol("<T as Trait>::f"), "<T?as?Trait>::f");
        assert_eq!(symbol("a \t\n b é ? c"), "a?b?c");
        assert_eq!(symbol("a??b"), "a??b", "left as it is when all is graphic");
        let long = "x".repeat(120);
        assert_eq!(symbol(&long), "x".repeat(96));
        assert_eq!(symbol(&format!("{} {long}", "y".repeat(90))).len(), 96);
    }

    #[test]
    fn the_list_names_functions() {
        let names = listed(STARTUP_FUNCTIONS);
        assert!(names.len() > 100, "{} names", names.len());
        assert!(names.iter().all(|n| !n.contains(char::is_whitespace)));
        assert_eq!(listed("# made by\n\na\n b \n#c\n"), ["a", "b"]);
    }
}
