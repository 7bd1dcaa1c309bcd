//! Factory closures: a closure that an old function of the module made before the reload
//! (`function M.new() return function() ... end end`) is matched to the new version of its
//! prototype by its place in the enclosing function (see `proto`), re-created from it, and
//! joined to its own upvalue cells, so it runs the new body with its own state. A closure
//! that cannot be matched safely stays as it is, and is counted.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::os::raw::c_int;

use mlua::ffi as lua;

use super::{Ref, Walker};
use crate::engine::plan::FnPair;
use crate::engine::proto::Dump;
use crate::engine::ptrmap::PtrSet;
use crate::vm::capi::{self, lua_State};

/// An old function of the module that may have made closures (a factory), with its new
/// version.
struct Enclosing {
    plan: usize,
    old: u32,
    new: u32,
    /// index in `Factories::sources`
    source: usize,
    line: c_int,
    last_line: c_int,
}

/// The chunk names of the plans' old functions, as far as the walk knows them.
enum Chunks {
    /// Not looked at yet.
    Unknown,
    /// Some were not read in place: any chunk may be theirs.
    Any,
    /// All of them.
    Names(Vec<Vec<u8>>),
}

/// What the walk knows of the plans' old functions to place a closure in them: indexed the
/// first time an unpaired closure needs it (most reloads meet none).
pub(super) struct Factories {
    chunks: Chunks,
    sources: Vec<Vec<u8>>,
    enclosing: Option<Vec<Enclosing>>,
    dumps: HashMap<Ref, Option<Dump>>,
}

impl Factories {
    pub(super) fn new() -> Factories {
        Factories {
            chunks: Chunks::Unknown,
            sources: Vec::new(),
            enclosing: None,
            dumps: HashMap::new(),
        }
    }
}

/// What a closure a factory of the module made becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Made {
    /// No single prototype of the new version takes its place (two prototypes on the same
    /// lines, no dump, none at the same place in the new version): left on the old code.
    Unmatched,
    /// The same code in both versions: nothing to update.
    Same,
    /// Prototype `.1` of the dump of new function `.0` (its code digest `.2`).
    New(Ref, usize, Option<u64>),
}

impl Made {
    /// Whether two prototypes the closure may come from would make the same of it.
    fn agrees(self, other: Made) -> bool {
        match (self, other) {
            (Made::New(_, _, a), Made::New(_, _, b)) => a.is_some() && a == b,
            (a, b) => a == b,
        }
    }
}

/// An old function with prototypes on a closure's lines (the paths to them in its dump),
/// and its new version.
struct Maker {
    plan: usize,
    old: Ref,
    new: Ref,
    paths: Vec<Vec<usize>>,
}

impl Walker<'_> {
    /// For an old closure of the reloaded code that the plan did not pair: a closure of the
    /// new version of its prototype, joined to its cells, or `None` (then it is counted as
    /// left if an old function made it but it could not be placed).
    pub(super) unsafe fn factory_closure(&mut self, l: *mut lua_State, c: c_int) -> Option<Ref> {
        // SAFETY: debug API reads; the loaded closure is popped on every path.
        unsafe {
            let mut ar: lua::lua_Debug = std::mem::zeroed();
            lua::lua_pushvalue(l, c);
            if lua::lua_getinfo(l, c">S".as_ptr(), &mut ar) == 0 || ar.source.is_null() {
                return None;
            }
            let source = CStr::from_ptr(ar.source).to_bytes();
            if !self.may_enclose(source) {
                return None;
            }
            self.enclosing(l);
            let src = self.factories.sources.iter().position(|s| s == source)?;
            // a closure on a cell the new version made is the new version's own
            let mut i = 1;
            while capi::get_upvalue(l, c, i).is_some() {
                lua::lua_pop(l, 1);
                if self.is_new_cell(capi::upvalue_id(l, c, i)) {
                    return None;
                }
                i += 1;
            }
            let (line, last) = (ar.linedefined, ar.lastlinedefined);
            let makers = self.makers(l, src, line, last);
            let plan = makers.first()?.plan;
            let made = match makers.as_slice() {
                [m] if m.paths.len() == 1 => self.follow(l, m.old, m.new, &m.paths[0]),
                // several prototypes on these lines (one-line functions side by side): the
                // closure's own code tells which is its, whatever order they were met in
                _ => self.pick(l, c, &makers),
            };
            match made {
                Made::Same => None,
                Made::New(new, index, _) => self.make_closure(l, c, new, index, source),
                Made::Unmatched => {
                    if let Some(out) = self.out.get_mut(plan) {
                        out.closures_left += 1;
                    }
                    None
                }
            }
        }
    }

    /// The innermost old functions with a prototype on lines `line..last` of chunk `src`:
    /// those made the closure. One whose own lines are the closure's but that has no
    /// prototype there did not: the closure is another closure of the same prototype (what
    /// the same factory made for another module), not this module's to update or count.
    ///
    /// # Safety
    /// `enclosing` is built.
    unsafe fn makers(
        &mut self,
        l: *mut lua_State,
        src: usize,
        line: c_int,
        last: c_int,
    ) -> Vec<Maker> {
        let mut makers = Vec::new();
        let mut depth = None;
        let n = self.factories.enclosing.as_ref().map_or(0, Vec::len);
        for e in 0..n {
            let Some(enc) = self.factories.enclosing.as_ref().and_then(|all| all.get(e)) else {
                break;
            };
            if enc.source != src || enc.line > line || enc.last_line < last {
                continue;
            }
            let (plan, span) = (enc.plan, enc.last_line - enc.line);
            let (old, new) = ((plan, enc.old), (plan, enc.new));
            if depth.is_some_and(|d| span > d) {
                break;
            }
            // SAFETY: forwarded.
            let paths = unsafe { self.paths(l, old, line, last) };
            if !paths.is_empty() {
                depth = Some(span);
                makers.push(Maker { plan, old, new, paths });
            }
        }
        makers
    }

    /// The old functions of the plans by chunk and lines, innermost first: a closure belongs
    /// to the smallest function around it.
    unsafe fn enclosing(&mut self, l: *mut lua_State) -> &[Enclosing] {
        let Walker { plans, factories, .. } = self;
        // SAFETY: anchored functions are pushed one at a time; lua_getinfo(">S") pops each.
        factories.enclosing.get_or_insert_with(|| unsafe {
            let mut all = Vec::new();
            for (pi, plan) in plans.iter().enumerate() {
                for &FnPair { old, new, .. } in &plan.fn_pairs {
                    plan.push(l, old);
                    let mut ar: lua::lua_Debug = std::mem::zeroed();
                    if lua::lua_getinfo(l, c">S".as_ptr(), &mut ar) == 0 || ar.source.is_null() {
                        continue;
                    }
                    let source = CStr::from_ptr(ar.source).to_bytes();
                    let sources = &mut factories.sources;
                    let at = match sources.iter().position(|s| s == source) {
                        Some(at) => at,
                        None => {
                            sources.push(source.to_vec());
                            sources.len() - 1
                        }
                    };
                    let (line, last_line) = (ar.linedefined, ar.lastlinedefined);
                    all.push(Enclosing { plan: pi, old, new, source: at, line, last_line });
                }
            }
            // innermost first; ties in an order of their own, not the order the plan met the
            // functions in (the hash order of the tables it walked, which differs by run)
            all.sort_by_key(|e| (e.last_line - e.line, e.plan, e.line));
            all
        })
    }

    /// Whether a closure of the chunk `source` may have been made by an old function of the
    /// plans. The chunk names read in place answer without the index (`enclosing`), which
    /// asks `lua_getinfo` about every old function: most closures the walk meets outside
    /// the plans (other modules') are answered this way.
    fn may_enclose(&mut self, source: &[u8]) -> bool {
        if let Chunks::Unknown = self.factories.chunks {
            let mut seen = PtrSet::default();
            let mut names = Vec::new();
            let mut all_known = true;
            for pair in self.plans.iter().flat_map(|p| &p.fn_pairs) {
                let Some(name) = pair.source else {
                    all_known = false;
                    break;
                };
                if seen.insert(name.id()) {
                    // SAFETY: the old function is anchored, and with it its chunk name.
                    names.push(unsafe { name.to_bytes() }.to_vec());
                }
            }
            self.factories.chunks = if all_known { Chunks::Names(names) } else { Chunks::Any };
        }
        match &self.factories.chunks {
            Chunks::Names(names) => names.iter().any(|n| n == source),
            Chunks::Any | Chunks::Unknown => true,
        }
    }

    /// The paths of the prototypes on lines `line..last` inside old function `old`.
    ///
    /// # Safety
    /// `old` is anchored.
    unsafe fn paths(
        &mut self,
        l: *mut lua_State,
        old: Ref,
        line: c_int,
        last: c_int,
    ) -> Vec<Vec<usize>> {
        let (Ok(line), Ok(last)) = (u32::try_from(line), u32::try_from(last)) else {
            return Vec::new();
        };
        // SAFETY: forwarded.
        unsafe { self.dump(l, old) };
        match self.factories.dumps.get(&old) {
            Some(Some(od)) => od.find_lines(od.root, line, last),
            _ => Vec::new(),
        }
    }

    /// What the prototype at `path` inside old function `old` becomes: the one at the same
    /// place inside `new`.
    ///
    /// # Safety
    /// Both are anchored.
    unsafe fn follow(&mut self, l: *mut lua_State, old: Ref, new: Ref, path: &[usize]) -> Made {
        // SAFETY: forwarded.
        unsafe { self.dump(l, new) };
        let dumps = &self.factories.dumps;
        let (Some(Some(od)), Some(Some(nd))) = (dumps.get(&old), dumps.get(&new)) else {
            return Made::Unmatched;
        };
        let (Some(oi), Some(ni)) = (od.follow(path), nd.follow(path)) else {
            return Made::Unmatched;
        };
        if od.body(oi) == nd.body(ni) {
            return Made::Same;
        }
        Made::New(new, ni, nd.code_digest(ni))
    }

    /// Of several prototypes on the lines of the closure at `c`, the one with the closure's
    /// code (compared without line information): what it becomes, if every such prototype
    /// agrees; `Unmatched` if none has its code or they disagree.
    ///
    /// # Safety
    /// `c` holds a Lua function; the makers' functions are anchored.
    unsafe fn pick(&mut self, l: *mut lua_State, c: c_int, makers: &[Maker]) -> Made {
        // SAFETY: as documented.
        let own = unsafe { capi::dump(l, c) }
            .and_then(|b| Dump::parse(&b).ok())
            .and_then(|d| d.code_digest(d.root));
        let Some(own) = own else { return Made::Unmatched };
        let mut made: Option<Made> = None;
        for m in makers {
            for path in &m.paths {
                let digest = match self.factories.dumps.get(&m.old) {
                    Some(Some(od)) => od.follow(path).and_then(|i| od.code_digest(i)),
                    _ => None,
                };
                if digest != Some(own) {
                    continue;
                }
                // SAFETY: as documented.
                let this = unsafe { self.follow(l, m.old, m.new, path) };
                match made {
                    None => made = Some(this),
                    Some(first) if !first.agrees(this) => return Made::Unmatched,
                    Some(_) => {}
                }
            }
        }
        made.unwrap_or(Made::Unmatched)
    }

    /// Parses (once) the dump of the anchored function `slot`.
    unsafe fn dump(&mut self, l: *mut lua_State, slot: Ref) {
        if self.factories.dumps.contains_key(&slot) {
            return;
        }
        // SAFETY: the anchored function is pushed, dumped and popped.
        unsafe {
            self.push_ref(l, slot);
            let parsed = capi::dump(l, -1).and_then(|bytes| Dump::parse(&bytes).ok());
            lua::lua_pop(l, 1);
            self.factories.dumps.insert(slot, parsed);
        }
    }

    /// Loads prototype `ni` of new function `new`'s dump as a closure and joins its upvalues
    /// to the cells of the old closure at `c`, by name.
    unsafe fn make_closure(
        &mut self,
        l: *mut lua_State,
        c: c_int,
        new: Ref,
        ni: usize,
        source: &[u8],
    ) -> Option<Ref> {
        let chunk = self.factories.dumps.get(&new).and_then(Option::as_ref)?.extract(ni, source)?;
        let name = CString::new(source).ok()?;
        // SAFETY: the chunk is loaded in binary mode; the closure is popped on every path.
        unsafe {
            let status = lua::luaL_loadbufferx(
                l,
                chunk.as_ptr().cast(),
                chunk.len(),
                name.as_ptr(),
                c"b".as_ptr(),
            );
            drop(chunk);
            drop(name);
            if status != lua::LUA_OK {
                lua::lua_pop(l, 1);
                self.tally(new).closures_left += 1;
                return None;
            }
            let g = lua::lua_gettop(l);
            let mut i = 1;
            while let Some(wanted) = capi::get_upvalue(l, g, i) {
                lua::lua_pop(l, 1);
                match find_upvalue(l, c, wanted) {
                    Some(j) => capi::join_upvalue(l, g, i, c, j),
                    // a new global access: the environment the new enclosing function has
                    None if wanted == b"_ENV" => {
                        self.push_ref(l, new);
                        let f = lua::lua_gettop(l);
                        match find_upvalue(l, f, b"_ENV") {
                            Some(j) => capi::join_upvalue(l, g, i, f, j),
                            None => {
                                lua::lua_pop(l, 2);
                                self.tally(new).closures_left += 1;
                                return None;
                            }
                        }
                        lua::lua_pop(l, 1);
                    }
                    // captures a variable the old closure did not have: no state to give it
                    None => {
                        lua::lua_pop(l, 1);
                        self.tally(new).closures_left += 1;
                        return None;
                    }
                }
                i += 1;
            }
            #[cfg(feature = "luajit")]
            {
                lua::lua_getfenv(l, c);
                lua::lua_setfenv(l, g);
            }
            let slot = self.plans.get_mut(new.0)?.anchor(l, g);
            lua::lua_pop(l, 1);
            self.tally(new).closures_updated += 1;
            Some((new.0, slot))
        }
    }
}

/// Index of the upvalue called `name` of the Lua function at `f`.
unsafe fn find_upvalue(l: *mut lua_State, f: c_int, name: &[u8]) -> Option<c_int> {
    // SAFETY: names are read and their values popped at once.
    unsafe {
        let mut j = 1;
        while let Some(n) = capi::get_upvalue(l, f, j) {
            let same = n == name;
            lua::lua_pop(l, 1);
            if same {
                return Some(j);
            }
            j += 1;
        }
        None
    }
}
