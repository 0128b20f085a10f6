//! Links CPython's libraries into one core module.
//!
//! componentize-py links libc, libpython, the runtime and their helpers as
//! shared libraries: a dozen core modules, each instantiated on its own and
//! wired to the others through bags of exports. wasmtime then pays for the
//! wiring on every start (94 core instances and 1,700 aliases to resolve,
//! every import and export name read back), fills the function table the
//! libraries share eagerly (6,300 entries, because every library's element
//! segment writes a table another module defines), and every call from one
//! library into another (`malloc`, `memcpy`) goes through an import.
//!
//! Once the snapshot is made the wiring is fixed, so this pass resolves it:
//! every module that can be (those whose imports are other modules' exports
//! or functions the component defines before them) becomes part of one
//! module, whose imports are only what comes from outside them; an import
//! that another member satisfies becomes a direct reference; the element
//! and data segments keep their order, with constant offsets. The component
//! then instantiates that one module where the last of them was, and what
//! used their exports (the canonical ABI's memory and `realloc`, the
//! fixup module that fills the shim's table, the exported functions) is
//! moved after it and reads the merged module's exports instead.
//!
//! Anything this pass does not follow (a start function, tags, a module
//! instantiated twice, a canonical function it does not know, an input it
//! cannot parse, a result that does not validate) leaves the component as
//! it was.

use crate::component::{MODULE_SECTION, Wiring, push_section};
use std::collections::{HashMap, HashSet};
use std::ops::Range;
use wasm_encoder::reencode::{self, Reencode, ReencodeComponent};
use wasmparser::{
    CanonicalFunction, CanonicalOption, ComponentAlias, ExternalKind, Instance,
    InstantiationArgKind, Operator, Parser, Payload, TypeRef,
};

/// What merging did, for tests and the build's report.
#[derive(Debug, PartialEq, Eq)]
pub struct Merged {
    /// Core modules linked into one.
    pub modules: usize,
    /// Imports of theirs that became direct references.
    pub imports_resolved: usize,
}

/// The component with its libraries linked into one module, or `None`
/// where it is left as it was.
pub fn merge_modules(component: &[u8]) -> Option<(Vec<u8>, Merged)> {
    // The same gate as the other passes: no module seen from outside.
    let wiring = Wiring::read(component)?;
    let top = Top::read(component, &wiring)?;
    let plan = Plan::make(&top)?;
    let (module, resolved) = link(component, &top, &plan)?;
    let out = emit(component, &top, &plan, &module)?;
    wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all())
        .validate_all(&out)
        .ok()?;
    Some((
        out,
        Merged {
            modules: plan.members.len(),
            imports_resolved: resolved,
        },
    ))
}

/// Section ids of a component's top level this pass reads item by item.
const CUSTOM_SECTION: u8 = 0;
const CORE_INSTANCE_SECTION: u8 = 2;
const ALIAS_SECTION: u8 = 6;
const TYPE_SECTION: u8 = 7;
const CANONICAL_SECTION: u8 = 8;

/// The core index spaces of a component's top level.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Space {
    Module,
    Instance,
    Func,
    Table,
    Memory,
    Global,
}

fn space_of(kind: ExternalKind) -> Option<Space> {
    Some(match kind {
        ExternalKind::Func | ExternalKind::FuncExact => Space::Func,
        ExternalKind::Table => Space::Table,
        ExternalKind::Memory => Space::Memory,
        ExternalKind::Global => Space::Global,
        ExternalKind::Tag => return None,
    })
}

fn kind_of(space: Space) -> wasm_encoder::ExportKind {
    match space {
        Space::Func => wasm_encoder::ExportKind::Func,
        Space::Table => wasm_encoder::ExportKind::Table,
        Space::Memory => wasm_encoder::ExportKind::Memory,
        _ => wasm_encoder::ExportKind::Global,
    }
}

enum What<'a> {
    /// A section copied as it is (types, imports, exports, component
    /// instances, nested components, custom sections).
    Section(u8, Range<usize>),
    Module(Range<usize>),
    Instance(Instance<'a>),
    Alias(ComponentAlias<'a>),
    Canon(CanonicalFunction),
}

struct Item<'a> {
    what: What<'a>,
    /// The core index this item defines.
    def: Option<(Space, u32)>,
    /// The core indices it reads.
    refs: Vec<(Space, u32)>,
}

/// A component's top level, item by item.
struct Top<'a> {
    items: Vec<Item<'a>>,
    /// (space, index) -> the item defining it.
    defs: HashMap<(Space, u32), usize>,
}

impl<'a> Top<'a> {
    /// The items of the sections `wiring` read at the component's top level.
    fn read(component: &'a [u8], wiring: &Wiring) -> Option<Top<'a>> {
        use wasmparser::{BinaryReader, SectionLimited};
        let mut items = Vec::new();
        let mut next: HashMap<Space, u32> = HashMap::new();
        let mut define = |space: Space| {
            let n = next.entry(space).or_insert(0);
            *n += 1;
            Some((space, *n - 1))
        };
        for (id, range) in &wiring.sections {
            let reader = BinaryReader::new(&component[range.clone()], range.start);
            match *id {
                MODULE_SECTION => items.push(Item {
                    what: What::Module(range.clone()),
                    def: define(Space::Module),
                    refs: Vec::new(),
                }),
                CORE_INSTANCE_SECTION => {
                    for instance in SectionLimited::<Instance>::new(reader).ok()? {
                        let instance = instance.ok()?;
                        let refs = match &instance {
                            Instance::Instantiate { module_index, args } => {
                                let mut refs = vec![(Space::Module, *module_index)];
                                for arg in args.iter() {
                                    if arg.kind != InstantiationArgKind::Instance {
                                        return None;
                                    }
                                    refs.push((Space::Instance, arg.index));
                                }
                                refs
                            }
                            Instance::FromExports(exports) => exports
                                .iter()
                                .map(|e| Some((space_of(e.kind)?, e.index)))
                                .collect::<Option<_>>()?,
                        };
                        items.push(Item {
                            what: What::Instance(instance),
                            def: define(Space::Instance),
                            refs,
                        });
                    }
                }
                ALIAS_SECTION => {
                    for alias in SectionLimited::<ComponentAlias>::new(reader).ok()? {
                        let alias = alias.ok()?;
                        let (def, refs) = match alias {
                            ComponentAlias::CoreInstanceExport {
                                kind,
                                instance_index,
                                ..
                            } => (
                                define(space_of(kind)?),
                                vec![(Space::Instance, instance_index)],
                            ),
                            // Component-level: their index spaces do not move.
                            _ => (None, Vec::new()),
                        };
                        items.push(Item {
                            what: What::Alias(alias),
                            def,
                            refs,
                        });
                    }
                }
                CANONICAL_SECTION => {
                    for canon in SectionLimited::<CanonicalFunction>::new(reader).ok()? {
                        let canon = canon.ok()?;
                        let (def, refs) = match &canon {
                            CanonicalFunction::Lift {
                                core_func_index,
                                options,
                                ..
                            } => {
                                let mut refs = option_refs(options);
                                refs.push((Space::Func, *core_func_index));
                                (None, refs)
                            }
                            CanonicalFunction::Lower { options, .. } => {
                                (define(Space::Func), option_refs(options))
                            }
                            CanonicalFunction::ResourceNew { .. }
                            | CanonicalFunction::ResourceDrop { .. }
                            | CanonicalFunction::ResourceRep { .. } => {
                                (define(Space::Func), Vec::new())
                            }
                            _ => return None,
                        };
                        items.push(Item {
                            what: What::Canon(canon),
                            def,
                            refs,
                        });
                    }
                }
                // Names by index, which this pass renumbers: dropped.
                CUSTOM_SECTION
                    if wasmparser::CustomSectionReader::new(reader.clone())
                        .ok()?
                        .name()
                        == "component-name" => {}
                // A resource's destructor names a core function from a type
                // section, which this pass copies as it is.
                TYPE_SECTION
                    if SectionLimited::<wasmparser::ComponentType>::new(reader.clone())
                        .ok()?
                        .into_iter()
                        .any(|t| {
                            !matches!(
                                t,
                                Ok(wasmparser::ComponentType::Resource { dtor: None, .. })
                                    | Ok(wasmparser::ComponentType::Defined(_))
                                    | Ok(wasmparser::ComponentType::Func(_))
                                    | Ok(wasmparser::ComponentType::Component(_))
                                    | Ok(wasmparser::ComponentType::Instance(_))
                            )
                        }) =>
                {
                    return None;
                }
                id => items.push(Item {
                    what: What::Section(id, range.clone()),
                    def: None,
                    refs: Vec::new(),
                }),
            }
        }
        let defs = items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| Some((item.def?, i)))
            .collect();
        Some(Top { items, defs })
    }

    fn def(&self, space: Space, index: u32) -> Option<usize> {
        self.defs.get(&(space, index)).copied()
    }

    /// Per item, whether it is one of `members` (core instances) or reads
    /// one, directly or through other items.
    fn reads_members(&self, members: &HashSet<u32>) -> Vec<bool> {
        let mut dep = vec![false; self.items.len()];
        for (i, item) in self.items.iter().enumerate() {
            dep[i] = matches!(item.def, Some((Space::Instance, ci)) if members.contains(&ci))
                || item
                    .refs
                    .iter()
                    .any(|r| self.def(r.0, r.1).is_some_and(|d| dep[d]));
        }
        dep
    }

    /// The core instance an alias item reads, if it is one.
    fn alias_of(&self, item: usize) -> Option<(u32, ExternalKind, &'a str)> {
        match self.items[item].what {
            What::Alias(ComponentAlias::CoreInstanceExport {
                kind,
                instance_index,
                name,
            }) => Some((instance_index, kind, name)),
            _ => None,
        }
    }
}

fn option_refs(options: &[CanonicalOption]) -> Vec<(Space, u32)> {
    options
        .iter()
        .filter_map(|o| match *o {
            CanonicalOption::Memory(m) => Some((Space::Memory, m)),
            CanonicalOption::Realloc(f)
            | CanonicalOption::PostReturn(f)
            | CanonicalOption::Callback(f) => Some((Space::Func, f)),
            _ => None,
        })
        .collect()
}

/// Which instances merge, and where everything goes.
struct Plan {
    /// Core instances merged, in order: (core instance, item, module item).
    members: Vec<(u32, usize, usize)>,
    /// The item at which the merged module is instantiated: the last member.
    at: usize,
    /// Items left out of the result.
    dropped: HashSet<usize>,
    /// Items before `at` that read the members: emitted after it.
    moved: HashSet<usize>,
}

impl Plan {
    fn make(top: &Top) -> Option<Plan> {
        let items = &top.items;
        let instance_item = |ci: u32| top.def(Space::Instance, ci);
        let mut member: HashSet<u32> = items
            .iter()
            .filter_map(|it| match (&it.what, it.def) {
                (What::Instance(Instance::Instantiate { .. }), Some((_, ci))) => Some(ci),
                _ => None,
            })
            .collect();
        loop {
            let dep = top.reads_members(&member);
            // A member may read another member only through bags and
            // aliases, which resolve statically; one that needs a function
            // made from a member's memory or `realloc` (the fixup) cannot
            // be part of it.
            let mut bad = Vec::new();
            for &ci in &member {
                let What::Instance(Instance::Instantiate { args, .. }) =
                    &items[instance_item(ci)?].what
                else {
                    return None;
                };
                let ok = args.iter().all(|arg| {
                    if member.contains(&arg.index) {
                        return true;
                    }
                    let Some(a) = instance_item(arg.index) else {
                        return false;
                    };
                    if !matches!(items[a].what, What::Instance(Instance::FromExports(_))) {
                        return false;
                    }
                    items[a].refs.iter().all(|r| {
                        let Some(d) = top.def(r.0, r.1) else {
                            return false;
                        };
                        match top.alias_of(d) {
                            Some((inst, _, _)) => {
                                member.contains(&inst)
                                    || instance_item(inst).is_some_and(|x| !dep[x])
                            }
                            None => matches!(items[d].what, What::Canon(_)) && !dep[d],
                        }
                    })
                });
                if !ok {
                    bad.push(ci);
                }
            }
            if bad.is_empty() {
                break;
            }
            for ci in bad {
                member.remove(&ci);
            }
        }
        if member.len() < 2 {
            return None;
        }

        // Members in order, each module instantiated once and by a member.
        let mut members = Vec::new();
        let mut module_users: HashMap<u32, usize> = HashMap::new();
        for item in items {
            if let What::Instance(Instance::Instantiate { module_index, .. }) = item.what {
                *module_users.entry(module_index).or_default() += 1;
            }
        }
        for (i, item) in items.iter().enumerate() {
            if let (What::Instance(Instance::Instantiate { module_index, .. }), Some((_, ci))) =
                (&item.what, item.def)
                && member.contains(&ci)
            {
                if module_users[module_index] != 1 {
                    return None;
                }
                members.push((ci, i, top.def(Space::Module, *module_index)?));
            }
        }
        let at = members.last()?.1;

        // Users of each item.
        let mut users: Vec<Vec<usize>> = vec![Vec::new(); items.len()];
        for (i, item) in items.iter().enumerate() {
            for r in &item.refs {
                users[top.def(r.0, r.1)?].push(i);
            }
        }
        let is_member_alias =
            |i: usize| top.alias_of(i).is_some_and(|(x, _, _)| member.contains(&x));
        let mut dropped: HashSet<usize> = members.iter().flat_map(|m| [m.1, m.2]).collect();
        for i in (0..items.len()).rev() {
            let droppable = is_member_alias(i)
                || matches!(items[i].what, What::Instance(Instance::FromExports(_)));
            if droppable && users[i].iter().all(|u| dropped.contains(u)) {
                dropped.insert(i);
            }
        }
        // Kept items before the merged instance that read a member move
        // after it (the members' own aliases are emitted there anew).
        let dep = top.reads_members(&member);
        let mut moved = HashSet::new();
        for (i, item) in items.iter().enumerate() {
            if i < at && dep[i] && !dropped.contains(&i) && !is_member_alias(i) {
                // A lifted function is a component-level definition, which
                // this pass does not reorder.
                if matches!(item.what, What::Canon(CanonicalFunction::Lift { .. })) {
                    return None;
                }
                moved.insert(i);
            }
        }
        Some(Plan {
            members,
            at,
            dropped,
            moved,
        })
    }
}

/// A member module, read.
struct Part<'a> {
    ci: u32,
    types: Vec<wasmparser::RecGroup>,
    type_count: u32,
    /// (module, name, type) per import, in order.
    imports: Vec<(&'a str, &'a str, TypeRef)>,
    funcs: Vec<u32>,
    tables: Vec<wasmparser::Table<'a>>,
    memories: Vec<wasmparser::MemoryType>,
    globals: Vec<wasmparser::Global<'a>>,
    exports: HashMap<&'a str, (ExternalKind, u32)>,
    elements: Vec<wasmparser::Element<'a>>,
    data: Vec<wasmparser::Data<'a>>,
    bodies: Vec<wasmparser::FunctionBody<'a>>,
    names: Vec<(u32, &'a str)>,
}

impl<'a> Part<'a> {
    fn read(ci: u32, bytes: &'a [u8]) -> Option<Part<'a>> {
        let mut p = Part {
            ci,
            types: Vec::new(),
            type_count: 0,
            imports: Vec::new(),
            funcs: Vec::new(),
            tables: Vec::new(),
            memories: Vec::new(),
            globals: Vec::new(),
            exports: HashMap::new(),
            elements: Vec::new(),
            data: Vec::new(),
            bodies: Vec::new(),
            names: Vec::new(),
        };
        for payload in Parser::new(0).parse_all(bytes) {
            match payload.ok()? {
                Payload::TypeSection(r) => {
                    for group in r {
                        let group = group.ok()?;
                        p.type_count += group.types().len() as u32;
                        p.types.push(group);
                    }
                }
                Payload::ImportSection(r) => {
                    for import in r.into_imports() {
                        let import = import.ok()?;
                        if matches!(import.ty, TypeRef::Tag(_) | TypeRef::FuncExact(_)) {
                            return None;
                        }
                        p.imports.push((import.module, import.name, import.ty));
                    }
                }
                Payload::FunctionSection(r) => {
                    p.funcs = r.into_iter().collect::<Result<_, _>>().ok()?
                }
                Payload::TableSection(r) => {
                    p.tables = r.into_iter().collect::<Result<_, _>>().ok()?
                }
                Payload::MemorySection(r) => {
                    p.memories = r.into_iter().collect::<Result<_, _>>().ok()?
                }
                Payload::GlobalSection(r) => {
                    p.globals = r.into_iter().collect::<Result<_, _>>().ok()?
                }
                Payload::ExportSection(r) => {
                    for e in r {
                        let e = e.ok()?;
                        p.exports.insert(e.name, (e.kind, e.index));
                    }
                }
                Payload::ElementSection(r) => {
                    p.elements = r.into_iter().collect::<Result<_, _>>().ok()?
                }
                Payload::DataSection(r) => p.data = r.into_iter().collect::<Result<_, _>>().ok()?,
                Payload::CodeSectionEntry(body) => p.bodies.push(body),
                Payload::CustomSection(c) => {
                    if let wasmparser::KnownCustom::Name(names) = c.as_known() {
                        for name in names {
                            if let Ok(wasmparser::Name::Function(map)) = name {
                                for n in map.into_iter().flatten() {
                                    p.names.push((n.index, n.name));
                                }
                            }
                        }
                    }
                }
                Payload::StartSection { .. } | Payload::TagSection(_) => return None,
                Payload::Version { .. }
                | Payload::DataCountSection { .. }
                | Payload::CodeSectionStart { .. }
                | Payload::End(_) => {}
                _ => return None,
            }
        }
        Some(p)
    }

    fn imported(&self, space: Space) -> u32 {
        self.imports
            .iter()
            .filter(|(_, _, ty)| import_space(ty) == space)
            .count() as u32
    }

    fn defined(&self, space: Space) -> u32 {
        (match space {
            Space::Func => self.funcs.len(),
            Space::Table => self.tables.len(),
            Space::Memory => self.memories.len(),
            Space::Global => self.globals.len(),
            _ => 0,
        }) as u32
    }
}

fn import_space(ty: &TypeRef) -> Space {
    match ty {
        TypeRef::Func(_) | TypeRef::FuncExact(_) => Space::Func,
        TypeRef::Table(_) => Space::Table,
        TypeRef::Memory(_) => Space::Memory,
        _ => Space::Global,
    }
}

const SPACES: [Space; 4] = [Space::Func, Space::Table, Space::Memory, Space::Global];

/// Where an import of a member comes from.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    /// Part `p`'s own definition `i` (its index among its defined items).
    Defined(usize, u32),
    /// A core item of the component's, from outside the members.
    Outside(Space, u32),
}

struct Resolver<'t, 'a> {
    top: &'t Top<'a>,
    parts: &'t [Part<'a>],
    /// Core instance -> its part.
    part_of: HashMap<u32, usize>,
    /// Core instance -> (import module name -> core instance).
    args: HashMap<u32, HashMap<&'a str, u32>>,
}

impl Resolver<'_, '_> {
    /// Part `p`'s index `local` in `space`, followed to its definition.
    fn local(&self, p: usize, space: Space, local: u32, depth: u32) -> Option<Source> {
        let part = &self.parts[p];
        let imported = part.imported(space);
        if local >= imported {
            return Some(Source::Defined(p, local - imported));
        }
        let (module, name, _) = *part
            .imports
            .iter()
            .filter(|(_, _, ty)| import_space(ty) == space)
            .nth(local as usize)?;
        self.import(p, module, name, space, depth)
    }

    fn import(
        &self,
        p: usize,
        module: &str,
        name: &str,
        space: Space,
        depth: u32,
    ) -> Option<Source> {
        if depth > 64 {
            return None;
        }
        let from = *self.args.get(&self.parts[p].ci)?.get(module)?;
        if let Some(&q) = self.part_of.get(&from) {
            return self.export(q, name, space, depth + 1);
        }
        let bag = self.top.def(Space::Instance, from)?;
        let What::Instance(Instance::FromExports(exports)) = &self.top.items[bag].what else {
            return None;
        };
        let entry = exports.iter().find(|e| e.name == name)?;
        if space_of(entry.kind)? != space {
            return None;
        }
        let d = self.top.def(space, entry.index)?;
        match self.top.alias_of(d) {
            Some((inst, _, export)) if self.part_of.contains_key(&inst) => {
                self.export(self.part_of[&inst], export, space, depth + 1)
            }
            _ => Some(Source::Outside(space, entry.index)),
        }
    }

    fn export(&self, q: usize, name: &str, space: Space, depth: u32) -> Option<Source> {
        let &(kind, local) = self.parts[q].exports.get(name)?;
        if space_of(kind)? != space {
            return None;
        }
        self.local(q, space, local, depth)
    }
}

/// The merged module.
struct Linked {
    bytes: Vec<u8>,
    /// Its imports, in order: (space, the component's core index).
    imports: Vec<(Space, u32)>,
    /// What the component reads of the members: (core instance, export
    /// name) -> (space, merged index).
    exports: HashMap<(u32, String), (Space, u32)>,
}

fn link(component: &[u8], top: &Top, plan: &Plan) -> Option<(Linked, usize)> {
    let parts: Vec<Part> = plan
        .members
        .iter()
        .map(|&(ci, _, module)| {
            let What::Module(range) = &top.items[module].what else {
                return None;
            };
            Part::read(ci, &component[range.clone()])
        })
        .collect::<Option<_>>()?;
    let mut args = HashMap::new();
    for &(ci, item, _) in &plan.members {
        let What::Instance(Instance::Instantiate { args: a, .. }) = &top.items[item].what else {
            return None;
        };
        args.insert(ci, a.iter().map(|x| (x.name, x.index)).collect());
    }
    let resolver = Resolver {
        top,
        parts: &parts,
        part_of: plan
            .members
            .iter()
            .enumerate()
            .map(|(p, m)| (m.0, p))
            .collect(),
        args,
    };

    // Every member's index spaces, resolved.
    let mut sources: Vec<HashMap<Space, Vec<Source>>> = Vec::new();
    let mut outside: Vec<(Space, u32, TypeRef, usize)> = Vec::new();
    let mut seen: HashSet<(Space, u32)> = HashSet::new();
    let mut resolved = 0;
    for (p, part) in parts.iter().enumerate() {
        let mut spaces = HashMap::new();
        for space in SPACES {
            let mut v = Vec::new();
            let mut k = 0;
            for (module, name, ty) in &part.imports {
                if import_space(ty) != space {
                    continue;
                }
                let s = resolver.import(p, module, name, space, 0)?;
                match s {
                    Source::Outside(sp, i) => {
                        if seen.insert((sp, i)) {
                            outside.push((sp, i, *ty, p));
                        }
                    }
                    Source::Defined(..) => resolved += 1,
                }
                v.push(s);
                k += 1;
            }
            debug_assert_eq!(k, part.imported(space));
            for i in 0..part.defined(space) {
                v.push(Source::Defined(p, i));
            }
            spaces.insert(space, v);
        }
        sources.push(spaces);
    }

    // Merged numbering: imports from outside first, then each part's own.
    let mut next: HashMap<Space, u32> = HashMap::new();
    let mut outside_index = HashMap::new();
    for (space, i, _, _) in &outside {
        let n = next.entry(*space).or_insert(0);
        outside_index.insert((*space, *i), *n);
        *n += 1;
    }
    let mut base = HashMap::new();
    for (p, part) in parts.iter().enumerate() {
        for space in SPACES {
            let n = next.entry(space).or_insert(0);
            base.insert((space, p), *n);
            *n += part.defined(space);
        }
    }
    let index = |space: Space, s: Source| match s {
        Source::Defined(p, i) => base[&(space, p)] + i,
        Source::Outside(sp, i) => outside_index[&(sp, i)],
    };
    let maps: Vec<HashMap<Space, Vec<u32>>> = sources
        .iter()
        .map(|spaces| {
            spaces
                .iter()
                .map(|(space, v)| (*space, v.iter().map(|s| index(*space, *s)).collect()))
                .collect()
        })
        .collect();
    moved_in_order(component, top, plan, &resolver, &parts, &|s| {
        index(Space::Table, s)
    })?;
    let mut type_base = Vec::new();
    let mut elem_base = Vec::new();
    let mut data_base = Vec::new();
    let (mut t, mut e, mut d) = (0, 0, 0);
    for part in &parts {
        type_base.push(t);
        elem_base.push(e);
        data_base.push(d);
        t += part.type_count;
        e += part.elements.len() as u32;
        d += part.data.len() as u32;
    }

    // The constant value of each immutable global the members define.
    let mut values: HashMap<u32, i32> = HashMap::new();
    loop {
        let before = values.len();
        for (p, part) in parts.iter().enumerate() {
            for (i, g) in part.globals.iter().enumerate() {
                let merged = base[&(Space::Global, p)] + i as u32;
                if g.ty.mutable || values.contains_key(&merged) {
                    continue;
                }
                if let Some(v) = evaluate(&g.init_expr, &maps[p][&Space::Global], &values) {
                    values.insert(merged, v);
                }
            }
        }
        if values.len() == before {
            break;
        }
    }

    let mut re: Vec<Rebase> = (0..parts.len())
        .map(|p| Rebase {
            maps: &maps[p],
            type_base: type_base[p],
            elem_base: elem_base[p],
            data_base: data_base[p],
            values: &values,
            imported_globals: outside.iter().filter(|o| o.0 == Space::Global).count() as u32,
        })
        .collect();

    let mut types = wasm_encoder::TypeSection::new();
    for (p, part) in parts.iter().enumerate() {
        for group in &part.types {
            re[p]
                .parse_recursive_type_group(types.ty(), group.clone())
                .ok()?;
        }
    }
    let mut imports = wasm_encoder::ImportSection::new();
    let mut import_list = Vec::new();
    for (n, (space, i, ty, p)) in outside.iter().enumerate() {
        let ty = reencode::utils::entity_type(&mut re[*p], *ty).ok()?;
        imports.import("outside", &n.to_string(), ty);
        import_list.push((*space, *i));
    }
    let mut funcs = wasm_encoder::FunctionSection::new();
    let mut tables = wasm_encoder::TableSection::new();
    let mut memories = wasm_encoder::MemorySection::new();
    let mut globals = wasm_encoder::GlobalSection::new();
    let mut elements = wasm_encoder::ElementSection::new();
    let mut data = wasm_encoder::DataSection::new();
    let mut code = wasm_encoder::CodeSection::new();
    let mut names = wasm_encoder::NameMap::new();
    let mut all_names = Vec::new();
    for (p, part) in parts.iter().enumerate() {
        let r = &mut re[p];
        for f in &part.funcs {
            funcs.function(r.type_index(*f).ok()?);
        }
        for table in &part.tables {
            r.parse_table(&mut tables, table.clone()).ok()?;
        }
        for memory in &part.memories {
            memories.memory(r.memory_type(*memory).ok()?);
        }
        for global in &part.globals {
            r.parse_global(&mut globals, global.clone()).ok()?;
        }
        for element in &part.elements {
            r.parse_element(&mut elements, element.clone()).ok()?;
        }
        for datum in &part.data {
            r.parse_data(&mut data, datum.clone()).ok()?;
        }
        for body in &part.bodies {
            r.parse_function_body(&mut code, body.clone()).ok()?;
        }
        for &(f, name) in &part.names {
            all_names.push((*r.maps[&Space::Func].get(f as usize)?, name));
        }
    }
    all_names.sort_by_key(|n| n.0);
    all_names.dedup_by_key(|n| n.0);
    for (f, name) in all_names {
        names.append(f, name);
    }

    // What the component reads of the members, exported.
    let mut exports = wasm_encoder::ExportSection::new();
    let mut exported: HashSet<(Space, u32)> = HashSet::new();
    let mut wanted = HashMap::new();
    for i in 0..top.items.len() {
        let Some((inst, kind, name)) = top.alias_of(i) else {
            continue;
        };
        let Some(&p) = resolver.part_of.get(&inst) else {
            continue;
        };
        if plan.dropped.contains(&i) {
            continue;
        }
        let space = space_of(kind)?;
        let merged = index(space, resolver.export(p, name, space, 0)?);
        if exported.insert((space, merged)) {
            exports.export(&export_name(space, merged), kind_of(space), merged);
        }
        wanted.insert((inst, name.to_string()), (space, merged));
    }

    let mut module = wasm_encoder::Module::new();
    module.section(&types);
    module.section(&imports);
    module.section(&funcs);
    module.section(&tables);
    module.section(&memories);
    module.section(&globals);
    module.section(&exports);
    module.section(&elements);
    if d > 0 {
        module.section(&wasm_encoder::DataCountSection { count: d });
    }
    module.section(&code);
    module.section(&data);
    let mut name_section = wasm_encoder::NameSection::new();
    name_section.functions(&names);
    module.section(&name_section);
    Some((
        Linked {
            bytes: module.finish(),
            imports: import_list,
            exports: wanted,
        },
        resolved,
    ))
}

/// The active element segments' tables (by merged index, or `None` for a
/// table of the module's own) of part or module `part`.
fn written_tables(
    part: &Part,
    table: &mut dyn FnMut(u32) -> Option<Option<u32>>,
) -> Option<Vec<Option<u32>>> {
    let mut out = Vec::new();
    for element in &part.elements {
        if let wasmparser::ElementKind::Active { table_index, .. } = element.kind {
            out.push(table(table_index.unwrap_or(0))?);
        }
    }
    Some(out)
}

/// `Some` where the instantiations moved after the merged one do nothing
/// whose order against the members' could be seen: no start function, no
/// data, and no element segment writing a table a member's segments write.
fn moved_in_order(
    component: &[u8],
    top: &Top,
    plan: &Plan,
    resolver: &Resolver,
    parts: &[Part],
    table_index: &dyn Fn(Source) -> u32,
) -> Option<()> {
    let mut written = HashSet::new();
    for (p, part) in parts.iter().enumerate() {
        let tables = written_tables(part, &mut |t| {
            Some(Some(table_index(resolver.local(p, Space::Table, t, 0)?)))
        })?;
        written.extend(tables.into_iter().flatten());
    }
    for &i in &plan.moved {
        let What::Instance(Instance::Instantiate { module_index, args }) = &top.items[i].what
        else {
            continue;
        };
        let What::Module(range) = &top.items[top.def(Space::Module, *module_index)?].what else {
            return None;
        };
        // No start function (`read` refuses one) and no data.
        let module = Part::read(u32::MAX, &component[range.clone()])?;
        if module
            .data
            .iter()
            .any(|d| matches!(d.kind, wasmparser::DataKind::Active { .. }))
        {
            return None;
        }
        let imported = module.imported(Space::Table);
        let tables = written_tables(&module, &mut |t| {
            if t >= imported {
                return Some(None);
            }
            let (from, name, _) = *module
                .imports
                .iter()
                .filter(|(_, _, ty)| import_space(ty) == Space::Table)
                .nth(t as usize)?;
            let arg = args.iter().find(|a| a.name == from)?.index;
            let source = match resolver.part_of.get(&arg) {
                Some(&q) => resolver.export(q, name, Space::Table, 0)?,
                None => {
                    let What::Instance(Instance::FromExports(bag)) =
                        &top.items[top.def(Space::Instance, arg)?].what
                    else {
                        return None;
                    };
                    let entry = bag.iter().find(|e| e.name == name)?;
                    let d = top.def(Space::Table, entry.index)?;
                    match top.alias_of(d) {
                        Some((inst, _, export)) if resolver.part_of.contains_key(&inst) => {
                            resolver.export(resolver.part_of[&inst], export, Space::Table, 0)?
                        }
                        _ => return Some(None),
                    }
                }
            };
            Some(Some(table_index(source)))
        })?;
        if tables.into_iter().flatten().any(|t| written.contains(&t)) {
            return None;
        }
    }
    Some(())
}

/// An initialiser made only of constants, globals of known value and i32
/// arithmetic, evaluated (globals by the part's own index).
fn evaluate(
    expr: &wasmparser::ConstExpr,
    globals: &[u32],
    values: &HashMap<u32, i32>,
) -> Option<i32> {
    crate::component::evaluate_i32(expr, |g| values.get(globals.get(g as usize)?).copied())
}

/// One part's indices, moved to the merged module's.
struct Rebase<'m> {
    maps: &'m HashMap<Space, Vec<u32>>,
    type_base: u32,
    elem_base: u32,
    data_base: u32,
    values: &'m HashMap<u32, i32>,
    /// How many globals the merged module imports.
    imported_globals: u32,
}

impl Rebase<'_> {
    fn map(&self, space: Space, i: u32) -> Result<u32, reencode::Error<std::convert::Infallible>> {
        self.maps[&space]
            .get(i as usize)
            .copied()
            .ok_or(reencode::Error::InvalidConstExpr)
    }
}

impl Reencode for Rebase<'_> {
    type Error = std::convert::Infallible;

    fn type_index(&mut self, ty: u32) -> Result<u32, reencode::Error<Self::Error>> {
        Ok(self.type_base + ty)
    }
    fn function_index(&mut self, f: u32) -> Result<u32, reencode::Error<Self::Error>> {
        self.map(Space::Func, f)
    }
    fn table_index(&mut self, t: u32) -> Result<u32, reencode::Error<Self::Error>> {
        self.map(Space::Table, t)
    }
    fn memory_index(&mut self, m: u32) -> Result<u32, reencode::Error<Self::Error>> {
        self.map(Space::Memory, m)
    }
    fn global_index(&mut self, g: u32) -> Result<u32, reencode::Error<Self::Error>> {
        self.map(Space::Global, g)
    }
    fn element_index(&mut self, e: u32) -> Result<u32, reencode::Error<Self::Error>> {
        Ok(self.elem_base + e)
    }
    fn data_index(&mut self, d: u32) -> Result<u32, reencode::Error<Self::Error>> {
        Ok(self.data_base + d)
    }
    fn tag_index(&mut self, _: u32) -> Result<u32, reencode::Error<Self::Error>> {
        Err(reencode::Error::InvalidConstExpr)
    }
    // An offset or initialiser reading a global that is now defined here
    // (not imported) becomes its constant, as constant expressions may only
    // read imported globals, and wasmtime lays out a table whose segments
    // have constant offsets ahead of time.
    fn const_expr(
        &mut self,
        expr: wasmparser::ConstExpr,
    ) -> Result<wasm_encoder::ConstExpr, reencode::Error<Self::Error>> {
        if let Some(value) = evaluate(&expr, &self.maps[&Space::Global], self.values) {
            return Ok(wasm_encoder::ConstExpr::i32_const(value));
        }
        // Anything else may read only a global the merged module imports:
        // wasmtime, built without GC, takes no other in a constant.
        for op in expr.get_operators_reader() {
            if let Ok(Operator::GlobalGet { global_index }) = op
                && self.map(Space::Global, global_index)? >= self.imported_globals
            {
                return Err(reencode::Error::InvalidConstExpr);
            }
        }
        reencode::utils::const_expr(self, expr)
    }
}

/// The component's core indices, old -> new, as the result is written.
#[derive(Default)]
struct Renumber {
    map: HashMap<(Space, u32), u32>,
    next: HashMap<Space, u32>,
    missing: bool,
}

impl Renumber {
    fn fresh(&mut self, space: Space) -> u32 {
        let n = self.next.entry(space).or_insert(0);
        *n += 1;
        *n - 1
    }
    fn define(&mut self, space: Space, old: u32) -> u32 {
        let n = self.fresh(space);
        self.map.insert((space, old), n);
        n
    }
    fn get(&mut self, space: Space, old: u32) -> u32 {
        match self.map.get(&(space, old)) {
            Some(n) => *n,
            None => {
                self.missing = true;
                0
            }
        }
    }
}

impl Reencode for Renumber {
    type Error = std::convert::Infallible;
    fn function_index(&mut self, f: u32) -> Result<u32, reencode::Error<Self::Error>> {
        Ok(self.get(Space::Func, f))
    }
    fn memory_index(&mut self, m: u32) -> Result<u32, reencode::Error<Self::Error>> {
        Ok(self.get(Space::Memory, m))
    }
    fn table_index(&mut self, t: u32) -> Result<u32, reencode::Error<Self::Error>> {
        Ok(self.get(Space::Table, t))
    }
    fn global_index(&mut self, g: u32) -> Result<u32, reencode::Error<Self::Error>> {
        Ok(self.get(Space::Global, g))
    }
}

impl ReencodeComponent for Renumber {
    fn instance_index(&mut self, i: u32) -> u32 {
        self.get(Space::Instance, i)
    }
    fn module_index(&mut self, m: u32) -> u32 {
        self.get(Space::Module, m)
    }
}

/// The component being written: sections of core instances, aliases and
/// canonical functions are filled item by item, each flushed when another
/// kind of section follows.
struct Writer {
    out: Vec<u8>,
    /// The id of the section being filled, if any.
    open: Option<u8>,
    instances: wasm_encoder::InstanceSection,
    aliases: wasm_encoder::ComponentAliasSection,
    canons: wasm_encoder::CanonicalFunctionSection,
}

impl Writer {
    fn new(header: &[u8]) -> Writer {
        Writer {
            out: header.to_vec(),
            open: None,
            instances: wasm_encoder::InstanceSection::new(),
            aliases: wasm_encoder::ComponentAliasSection::new(),
            canons: wasm_encoder::CanonicalFunctionSection::new(),
        }
    }

    fn flush(&mut self) {
        // A component of that one section, without its 8-byte header.
        let mut one = wasm_encoder::Component::new();
        match self.open.take() {
            None => return,
            Some(2) => one.section(&std::mem::take(&mut self.instances)),
            Some(6) => one.section(&std::mem::take(&mut self.aliases)),
            Some(_) => one.section(&std::mem::take(&mut self.canons)),
        };
        self.out.extend_from_slice(&one.finish()[8..]);
    }

    fn open(&mut self, id: u8) {
        if self.open != Some(id) {
            self.flush();
            self.open = Some(id);
        }
    }

    fn instances(&mut self) -> &mut wasm_encoder::InstanceSection {
        self.open(2);
        &mut self.instances
    }

    fn aliases(&mut self) -> &mut wasm_encoder::ComponentAliasSection {
        self.open(6);
        &mut self.aliases
    }

    fn canons(&mut self) -> &mut wasm_encoder::CanonicalFunctionSection {
        self.open(8);
        &mut self.canons
    }

    fn section(&mut self, id: u8, data: &[u8]) {
        self.flush();
        push_section(&mut self.out, id, data);
    }
}

fn emit(component: &[u8], top: &Top, plan: &Plan, linked: &Linked) -> Option<Vec<u8>> {
    let mut w = Writer::new(&component[..8]);
    let mut rn = Renumber::default();
    let first_module = plan.members.iter().map(|m| m.2).min()?;
    let mut merged_module = None;
    let mut merged_instance = None;
    let member_instances: HashSet<u32> = plan.members.iter().map(|m| m.0).collect();

    for (i, item) in top.items.iter().enumerate() {
        if i == first_module {
            w.section(1, &linked.bytes);
            merged_module = Some(rn.fresh(Space::Module));
        }
        if i == plan.at {
            // The imports from outside, in one bag; the merged instance;
            // the members' exports that kept items read; then those items.
            let bag: Vec<(String, wasm_encoder::ExportKind, u32)> = linked
                .imports
                .iter()
                .enumerate()
                .map(|(n, (space, old))| (n.to_string(), kind_of(*space), rn.get(*space, *old)))
                .collect();
            w.instances()
                .export_items(bag.iter().map(|(n, k, i)| (n.as_str(), *k, *i)));
            let bag = rn.fresh(Space::Instance);
            w.instances().instantiate(
                merged_module?,
                [("outside", wasm_encoder::ModuleArg::Instance(bag))],
            );
            let merged = rn.fresh(Space::Instance);
            merged_instance = Some(merged);
            for &(ci, _, _) in &plan.members {
                rn.map.insert((Space::Instance, ci), merged);
            }
            for j in 0..plan.at {
                if let Some((inst, _, _)) = top.alias_of(j)
                    && member_instances.contains(&inst)
                    && !plan.dropped.contains(&j)
                {
                    member_alias(&mut w, &mut rn, top, linked, j, merged)?;
                }
            }
            for j in 0..plan.at {
                if plan.moved.contains(&j) {
                    write(
                        &mut w,
                        &mut rn,
                        top,
                        j,
                        &member_instances,
                        linked,
                        Some(merged),
                    )?;
                }
            }
            continue;
        }
        if plan.dropped.contains(&i) || plan.moved.contains(&i) {
            continue;
        }
        if i < plan.at
            && let Some((inst, _, _)) = top.alias_of(i)
            && member_instances.contains(&inst)
        {
            // Emitted after the merged instance, where it exists.
            continue;
        }
        match &item.what {
            What::Section(id, range) => w.section(*id, &component[range.clone()]),
            What::Module(range) => {
                w.section(1, &component[range.clone()]);
                rn.define(Space::Module, item.def?.1);
            }
            _ => write(
                &mut w,
                &mut rn,
                top,
                i,
                &member_instances,
                linked,
                merged_instance,
            )?,
        }
    }
    w.flush();
    if rn.missing {
        return None;
    }
    Some(w.out)
}

/// The merged module's name for its export of `index` in `space`.
fn export_name(space: Space, index: u32) -> String {
    let prefix = match space {
        Space::Func => "f",
        Space::Table => "t",
        Space::Memory => "m",
        _ => "g",
    };
    format!("{prefix}{index}")
}

/// Alias item `item` (of a member's export) written as an alias of the
/// merged instance's.
fn member_alias(
    w: &mut Writer,
    rn: &mut Renumber,
    top: &Top,
    linked: &Linked,
    item: usize,
    merged: u32,
) -> Option<()> {
    let (inst, _, name) = top.alias_of(item)?;
    let &(space, index) = linked.exports.get(&(inst, name.to_string()))?;
    w.aliases().alias(wasm_encoder::Alias::CoreInstanceExport {
        instance: merged,
        kind: kind_of(space),
        name: &export_name(space, index),
    });
    let (space, old) = top.items[item].def?;
    rn.define(space, old);
    Some(())
}

fn write(
    w: &mut Writer,
    rn: &mut Renumber,
    top: &Top,
    i: usize,
    members: &HashSet<u32>,
    linked: &Linked,
    merged: Option<u32>,
) -> Option<()> {
    let item = &top.items[i];
    match &item.what {
        What::Instance(Instance::Instantiate { module_index, args }) => {
            let module = rn.get(Space::Module, *module_index);
            let args: Vec<(&str, wasm_encoder::ModuleArg)> = args
                .iter()
                .map(|a| {
                    (
                        a.name,
                        wasm_encoder::ModuleArg::Instance(rn.get(Space::Instance, a.index)),
                    )
                })
                .collect();
            w.instances().instantiate(module, args);
            rn.define(Space::Instance, item.def?.1);
        }
        What::Instance(Instance::FromExports(exports)) => {
            let items: Vec<(&str, wasm_encoder::ExportKind, u32)> = exports
                .iter()
                .map(|e| {
                    let space = space_of(e.kind)?;
                    Some((e.name, kind_of(space), rn.get(space, e.index)))
                })
                .collect::<Option<_>>()?;
            w.instances().export_items(items);
            rn.define(Space::Instance, item.def?.1);
        }
        What::Alias(alias) => {
            if let ComponentAlias::CoreInstanceExport {
                kind,
                instance_index,
                name,
            } = alias
            {
                if members.contains(instance_index) {
                    member_alias(w, rn, top, linked, i, merged?)?;
                } else {
                    let instance = rn.get(Space::Instance, *instance_index);
                    w.aliases().alias(wasm_encoder::Alias::CoreInstanceExport {
                        instance,
                        kind: kind_of(space_of(*kind)?),
                        name,
                    });
                    let (space, old) = item.def?;
                    rn.define(space, old);
                }
            } else {
                let a = rn.component_alias(alias.clone()).ok()?;
                w.aliases().alias(a);
            }
        }
        What::Canon(canon) => {
            reencode::component_utils::parse_component_canonical(rn, w.canons(), canon.clone())
                .ok()?;
            if let Some((space, old)) = item.def {
                rn.define(space, old);
            }
        }
        What::Section(..) | What::Module(_) => return None,
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// The shape componentize-py gives CPython, in small: a shim whose
    /// table a fixup fills with a lowered host function (which needs the
    /// main module's memory), a main module holding the memory, table and
    /// shared globals, two libraries calling each other directly and
    /// through the table, a host function lowered without options that a
    /// library imports straight, and an `__init` that puts a function in
    /// the table after the fixup ran. `A` is spliced into library `a`,
    /// `FIXUP_IMPORTS` and `FIXUP` into the fixup (its bag offers the main
    /// module's table as "table" too).
    fn linked(a: &str, fixup_imports: &str, fixup: &str) -> Vec<u8> {
        wat::parse_str(format!(
            r#"(component
            (import "log" (func $log (param "n" u32) (param "s" string)))
            (import "tick" (func $tick (result u32)))
            (core module $shim
                (type $t (func (param i32 i32 i32)))
                (table (export "$imports") 1 1 funcref)
                (func (export "0") (type $t)
                    local.get 0 local.get 1 local.get 2 i32.const 0
                    call_indirect (type $t)))
            (core module $fixup
                (type $t (func (param i32 i32 i32)))
                (import "" "$imports" (table 1 1 funcref))
                {fixup_imports}
                (import "" "0" (func $f (type $t)))
                (elem (i32.const 0) func $f)
                {fixup})
            (core module $main
                (memory (export "memory") 1)
                (table (export "table") 2 funcref)
                (global (export "counter") (mut i32) (i32.const 0))
                (global (export "table_base") i32 (i32.const 1)))
            (core module $a
                (import "env" "memory" (memory 1))
                (import "env" "table" (table 2 funcref))
                (import "env" "counter" (global $c (mut i32)))
                (import "env" "__table_base" (global $tb i32))
                (func $add (export "add") (param i32 i32) (result i32)
                    global.get $c i32.const 1 i32.add global.set $c
                    local.get 0 local.get 1 i32.add)
                (elem (global.get $tb) func $add)
                (func (export "store") (param i32) i32.const 16 local.get 0 i32.store)
                {a})
            (core module $b
                (import "env" "memory" (memory 1))
                (import "env" "table" (table 2 funcref))
                (import "env" "counter" (global $c (mut i32)))
                (import "a" "add" (func $add (param i32 i32) (result i32)))
                (import "a" "store" (func $store (param i32)))
                (import "host" "log" (func $log (param i32 i32 i32)))
                (import "host" "tick" (func $tick (result i32)))
                (type $bin (func (param i32 i32) (result i32)))
                (data (i32.const 100) "hello")
                (func (export "run") (result i32)
                    i32.const 7 i32.const 100 i32.const 5 call $log
                    i32.const 2 i32.const 3 call $add
                    i32.const 10 i32.const 20 i32.const 1 call_indirect (type $bin)
                    i32.add
                    i32.const 1 i32.const 1 i32.const 0 call_indirect (type $bin)
                    i32.add
                    call $store
                    i32.const 16 i32.load
                    global.get $c i32.const 100 i32.mul
                    i32.add
                    call $tick i32.const 1000 i32.mul
                    i32.add))
            (core module $init
                (import "env" "table" (table 2 funcref))
                (import "a" "add" (func $add (param i32 i32) (result i32)))
                (elem (i32.const 0) func $add))
            (core instance $shim (instantiate $shim))
            (core instance $main (instantiate $main))
            (alias core export $main "memory" (core memory $mem))
            (alias core export $main "table" (core table $tab))
            (alias core export $main "counter" (core global $counter))
            (alias core export $main "table_base" (core global $tb))
            (core instance $env (export "memory" (memory $mem)) (export "table" (table $tab))
                (export "counter" (global $counter)) (export "__table_base" (global $tb)))
            (core instance $a (instantiate $a (with "env" (instance $env))))
            (alias core export $shim "0" (core func $log_tramp))
            (core func $tick_lowered (canon lower (func $tick)))
            (core instance $host (export "log" (func $log_tramp))
                (export "tick" (func $tick_lowered)))
            (core instance $b (instantiate $b (with "env" (instance $env))
                (with "a" (instance $a)) (with "host" (instance $host))))
            (alias core export $shim "$imports" (core table $imports))
            (core func $log_lowered (canon lower (func $log) (memory $mem)))
            (core instance $fixup_args (export "$imports" (table $imports))
                (export "0" (func $log_lowered)) (export "table" (table $tab)))
            (core instance (instantiate $fixup (with "" (instance $fixup_args))))
            (core instance (instantiate $init (with "env" (instance $main)) (with "a" (instance $a))))
            (alias core export $b "run" (core func $run))
            (func (export "run") (result u32) (canon lift (core func $run))))"#
        ))
        .unwrap()
    }

    /// Runs the component's `run`: what it returned, and what it logged.
    fn run(component: &[u8]) -> (u32, Vec<(u32, String)>) {
        let engine = wasmtime::Engine::default();
        let component = wasmtime::component::Component::new(&engine, component).unwrap();
        let logged = Arc::new(Mutex::new(Vec::new()));
        let mut linker = wasmtime::component::Linker::<()>::new(&engine);
        let sink = logged.clone();
        linker
            .root()
            .func_wrap("log", move |_, (n, s): (u32, String)| {
                sink.lock().unwrap().push((n, s));
                Ok(())
            })
            .unwrap();
        linker
            .root()
            .func_wrap("tick", |_, (): ()| Ok((5u32,)))
            .unwrap();
        let mut store = wasmtime::Store::new(&engine, ());
        let instance = linker.instantiate(&mut store, &component).unwrap();
        let f = instance
            .get_typed_func::<(), (u32,)>(&mut store, "run")
            .unwrap();
        let (result,) = f.call(&mut store, ()).unwrap();
        let logged = logged.lock().unwrap().clone();
        (result, logged)
    }

    /// The component's top-level modules.
    fn modules(component: &[u8]) -> Vec<Vec<u8>> {
        let wiring = Wiring::read(component).unwrap();
        wiring
            .modules
            .iter()
            .map(|r| component[r.clone()].to_vec())
            .collect()
    }

    #[test]
    fn the_libraries_become_one_module_that_behaves_the_same() {
        let original = linked("", "", "");
        // add(2,3) + add(10,20) through the table slot `a` filled at its
        // base + add(1,1) through the slot `__init` filled, stored in the
        // shared memory and read back, plus the shared counter (3) * 100,
        // plus the host's tick (5) * 1000.
        let expected = (5337, vec![(7, "hello".to_string())]);
        assert_eq!(run(&original), expected);

        let (merged, stats) = merge_modules(&original).expect("merged");
        assert_eq!(stats.modules, 5);
        assert_eq!(run(&merged), expected);

        // One module for the five, and the fixup, which needs the merged
        // module's memory, apart and after it.
        let mods = modules(&merged);
        assert_eq!(mods.len(), 2);
        let part = Part::read(0, &mods[0]).unwrap();
        // What the members gave each other is no import any more; what came
        // from outside them still is.
        assert_eq!(part.imports.len(), 1, "{:?}", part.imports);
        assert_eq!(part.tables.len(), 2);
        // Every segment's offset is a constant, so wasmtime can lay the
        // table out ahead of time.
        for element in &part.elements {
            let wasmparser::ElementKind::Active { offset_expr, .. } = &element.kind else {
                panic!("passive segment");
            };
            let ops: Vec<_> = offset_expr
                .get_operators_reader()
                .into_iter()
                .map(|o| o.unwrap())
                .collect();
            assert!(
                matches!(ops[..], [Operator::I32Const { .. }, Operator::End]),
                "{ops:?}"
            );
        }
        assert_eq!(mods[1], modules(&original)[1], "fixup unchanged");
        // Nothing is left to merge.
        assert!(merge_modules(&merged).is_none());
    }

    #[test]
    fn what_would_run_in_another_order_is_left_alone() {
        // The fixup would now run after `__init`: with a start function,
        // data, or a segment on the table `__init` writes, that shows.
        for (imports, fixup) in [
            ("", "(start $s) (func $s)"),
            ("", "(memory 1) (data (i32.const 0) \"x\")"),
            (
                "(import \"\" \"table\" (table $t 2 funcref))",
                "(elem (table $t) (i32.const 0) func $f)",
            ),
        ] {
            let original = linked("", imports, fixup);
            run(&original);
            assert!(merge_modules(&original).is_none(), "{fixup}");
        }
    }

    #[test]
    fn what_it_cannot_follow_is_left_alone() {
        // A start function runs at its module's own place in the order.
        assert!(merge_modules(&linked("(start $add2) (func $add2)", "", "")).is_none());
        // A module instantiated twice.
        let twice = r#"(component
            (core module $m (func (export "f")))
            (core instance $a (instantiate $m))
            (core instance $b (instantiate $m)))"#;
        assert!(merge_modules(&wat::parse_str(twice).unwrap()).is_none());
        // One module alone: nothing to merge.
        let one =
            r#"(component (core module $m (func (export "f"))) (core instance (instantiate $m)))"#;
        assert!(merge_modules(&wat::parse_str(one).unwrap()).is_none());
        // A constant reading a global that would no longer be imported,
        // and is no i32 this pass can evaluate.
        let wide = r#"(component
            (core module $main (global (export "g") i64 (i64.const 5)))
            (core module $lib
                (import "env" "g" (global $g i64))
                (global $h (export "h") i64 (global.get $g)))
            (core instance $main (instantiate $main))
            (core instance $lib (instantiate $lib (with "env" (instance $main)))))"#;
        assert!(merge_modules(&wat::parse_str(wide).unwrap()).is_none());
        // A resource's destructor names a core function from a type.
        let dtor = r#"(component
            (core module $m (func (export "d") (param i32)))
            (core module $n (func (export "e")))
            (core instance $m (instantiate $m))
            (core instance $n (instantiate $n))
            (alias core export $m "d" (core func $d))
            (type $r (resource (rep i32) (dtor (core func $d)))))"#;
        assert!(merge_modules(&wat::parse_str(dtor).unwrap()).is_none());
        assert!(merge_modules(b"\0asm\x01\0\0\0").is_none());
        assert!(merge_modules(b"not wasm").is_none());
    }
}
