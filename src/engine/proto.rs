//! Function prototypes inside `string.dump` output (Lua 5.3, 5.4, 5.5 and LuaJIT formats):
//! the tree of nested prototypes with their line ranges, and how to cut one nested prototype
//! out as a chunk of its own. This is how a closure made before a reload (by a factory such as
//! `function M.new() return function() ... end end`) gets a closure of the new version of
//! its prototype: the C API cannot make a closure of a nested prototype, but `load` can
//! load one that stands alone. Pure: bytes in, bytes out, every read bounds-checked.
//!
//! Lua 5.5 saves each string once and refers to it by index afterwards (a nested function's
//! source is such a reference, usually to a string its parent's constants saved), and pads
//! code and absolute line information to alignments counted from the start of the dump; so a
//! 5.5 record is not self-contained and is re-emitted, not copied (`Rec55`).

use std::borrow::Cow;
use std::collections::HashMap;

/// One prototype of a dump.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proto {
    pub line: u32,
    pub last_line: u32,
    pub upvalues: u32,
    /// Nested prototypes, in the order the compiler numbered them.
    pub children: Vec<usize>,
    /// Byte range of this prototype's own record (5.x: the function and everything nested
    /// in it; LuaJIT: the records of its descendants and its own, which are contiguous).
    range: (usize, usize),
    /// See `Dump::code_digest`.
    digest: u64,
}

/// FNV-1a, 64 bits: stable, simple, and enough to tell two versions of a function apart.
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn bytes(&mut self, b: &[u8]) {
        for &x in b {
            self.0 = (self.0 ^ u64::from(x)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn u64(&mut self, x: u64) {
        self.bytes(&x.to_le_bytes());
    }

    /// A length, then the bytes: sections of different lengths never run together.
    fn block(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        self.bytes(b);
    }

    /// The digests of nested prototypes, in order.
    fn children(&mut self, children: &[usize], protos: &[Proto]) -> R<()> {
        self.u64(children.len() as u64);
        for &c in children {
            self.u64(protos.get(c).ok_or("lost prototype")?.digest);
        }
        Ok(())
    }
}

/// Lua 5.5's PF_FIXED: set in a prototype loaded from a fixed buffer, not part of its code.
const PF_FIXED: u8 = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Lua53 {
        int: usize,
        size_t: usize,
    },
    Lua54,
    /// Sizes from the header: C `int` (aligns absolute line information), `Instruction`
    /// (aligns code) and `lua_Number` (float constants).
    Lua55 {
        int: usize,
        inst: usize,
        num: usize,
    },
    LuaJit,
}

/// Deepest nesting of prototypes parsed (Lua's and LuaJIT's parsers stop at 200 levels).
const MAX_DEPTH: usize = 250;

/// A Lua 5.5 string: the byte range of its contents in the dump (without the terminating
/// NUL the dump carries), or NULL.
type Str = Option<(usize, usize)>;

/// A Lua 5.5 constant.
#[derive(Clone, Debug)]
enum K55 {
    Nil,
    False,
    True,
    /// The varint as dumped (the integer zigzag-coded).
    Int(u64),
    /// A `lua_Number`'s bytes.
    Float((usize, usize)),
    /// Its tag (short or long, as the dumping Lua classified it) and contents.
    Str(u8, (usize, usize)),
}

/// What a Lua 5.5 function record holds besides its children, with the strings resolved
/// and the padding dropped: enough to write the record anew at any offset.
#[derive(Clone, Debug, Default)]
struct Rec55 {
    line: u32,
    last_line: u32,
    /// numparams, flag, maxstacksize
    head: [u8; 3],
    n_code: usize,
    code: (usize, usize),
    k: Vec<K55>,
    /// instack, idx and kind of each upvalue
    upvalues: (usize, usize),
    source: Str,
    lineinfo: (usize, usize),
    n_abs: usize,
    abslineinfo: (usize, usize),
    /// name, startpc, endpc
    locvars: Vec<(Str, u32, u32)>,
    /// Empty, or one per upvalue.
    upnames: Vec<Str>,
}

/// Type tags of constants in 5.4 and 5.5 dumps.
const VNIL: u8 = 0;
const VFALSE: u8 = 1;
const VTRUE: u8 = 17;
const VNUMINT: u8 = 3;
const VNUMFLT: u8 = 19;
const VSHRSTR: u8 = 4;
const VLNGSTR: u8 = 20;

/// A parsed dump.
#[derive(Clone, Debug)]
pub struct Dump {
    bytes: Vec<u8>,
    format: Format,
    /// Length of the header (5.x: up to the main function's upvalue count byte; LuaJIT: up to
    /// the first prototype).
    header: usize,
    pub protos: Vec<Proto>,
    pub root: usize,
    /// Lua 5.5: each prototype's record, by the index of `protos`; empty for other formats.
    recs: Vec<Rec55>,
}

type R<T> = Result<T, &'static str>;

struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn byte(&mut self) -> R<u8> {
        let v = *self.b.get(self.at).ok_or("truncated dump")?;
        self.at += 1;
        Ok(v)
    }

    fn skip(&mut self, n: usize) -> R<()> {
        let end = self.at.checked_add(n).ok_or("bad size")?;
        if end > self.b.len() {
            return Err("truncated dump");
        }
        self.at = end;
        Ok(())
    }

    fn take(&mut self, n: usize) -> R<&'a [u8]> {
        let start = self.at;
        self.skip(n)?;
        self.b.get(start..self.at).ok_or("truncated dump")
    }

    /// Lua 5.4's size encoding: 7 bits per byte, most significant first, last byte marked.
    fn size54(&mut self) -> R<usize> {
        let mut x: usize = 0;
        loop {
            let b = self.byte()?;
            x = x.checked_mul(128).ok_or("bad size")? | usize::from(b & 0x7f);
            if b & 0x80 != 0 {
                return Ok(x);
            }
        }
    }

    /// Lua 5.5's varint: 7 bits per byte, most significant first, every byte but the last
    /// marked. Like lundump.c's loadVarint, refuses a value that would exceed `limit`.
    fn varint55(&mut self, limit: u64) -> R<u64> {
        let mut x: u64 = 0;
        loop {
            let b = self.byte()?;
            if x > limit >> 7 {
                return Err("integer overflow");
            }
            x = (x << 7) | u64::from(b & 0x7f);
            if b & 0x80 == 0 {
                return Ok(x);
            }
        }
    }

    /// Lua 5.5's loadInt: a varint up to INT_MAX.
    fn int55(&mut self) -> R<u32> {
        u32::try_from(self.varint55(i32::MAX as u64)?).map_err(|_| "bad size")
    }

    /// A Lua 5.5 count of items of `each` bytes, and their byte length.
    fn count55(&mut self, each: usize) -> R<(usize, usize)> {
        let n = self.int55()? as usize;
        Ok((n, n.checked_mul(each).ok_or("bad size")?))
    }

    /// Skips Lua 5.5's padding to a multiple of `align` from the start of the dump.
    fn align55(&mut self, align: usize) -> R<()> {
        let pad = align.checked_sub(self.at.checked_rem(align).ok_or("bad alignment")?);
        self.skip(pad.ok_or("bad alignment")? % align)
    }

    /// The range of the next `n` bytes.
    fn span(&mut self, n: usize) -> R<(usize, usize)> {
        let start = self.at;
        self.skip(n)?;
        Ok((start, self.at))
    }

    /// Skips a LuaJIT ULEB128 (or 33-bit ULEB128: the same bytes) of up to 5 bytes.
    fn skip_uleb(&mut self) -> R<()> {
        for _ in 0..5 {
            if self.byte()? & 0x80 == 0 {
                return Ok(());
            }
        }
        Err("bad uleb128")
    }

    /// LuaJIT's ULEB128.
    fn uleb(&mut self) -> R<u32> {
        let mut x: u32 = 0;
        let mut shift = 0;
        loop {
            let b = self.byte()?;
            if shift >= 32 {
                return Err("bad uleb128");
            }
            x |= u32::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(x);
            }
            shift += 7;
        }
    }

    fn uint(&mut self, size: usize) -> R<usize> {
        let bytes = self.take(size)?;
        let mut x: u64 = 0;
        for (i, &b) in bytes.iter().enumerate().take(8) {
            x |= u64::from(b) << (8 * i);
        }
        usize::try_from(x).map_err(|_| "bad size")
    }
}

impl Dump {
    pub fn parse(bytes: &[u8]) -> R<Dump> {
        match bytes.get(..4) {
            Some(b"\x1bLua") => match bytes.get(4) {
                Some(0x55) => parse_55(bytes),
                Some(0x54) => parse_5x(bytes, Format::Lua54),
                Some(0x53) => {
                    let int = usize::from(*bytes.get(12).ok_or("truncated dump")?);
                    let size_t = usize::from(*bytes.get(13).ok_or("truncated dump")?);
                    parse_5x(bytes, Format::Lua53 { int, size_t })
                }
                _ => Err("unsupported Lua version"),
            },
            Some([0x1b, b'L', b'J', _]) => parse_jit(bytes),
            _ => Err("not a Lua dump"),
        }
    }

    /// The prototype reached from the root by `path` (child indices).
    pub fn follow(&self, path: &[usize]) -> Option<usize> {
        path.iter().try_fold(self.root, |at, &i| self.protos.get(at)?.children.get(i).copied())
    }

    /// Paths (below `from`, not `from` itself) of the prototypes defined on these lines.
    pub fn find_lines(&self, from: usize, line: u32, last_line: u32) -> Vec<Vec<usize>> {
        let mut found = Vec::new();
        let mut stack: Vec<(usize, Vec<usize>)> = vec![(from, Vec::new())];
        while let Some((at, path)) = stack.pop() {
            let Some(p) = self.protos.get(at) else { continue };
            for (i, &c) in p.children.iter().enumerate() {
                let mut child_path = path.clone();
                child_path.push(i);
                if let Some(cp) = self.protos.get(c)
                    && cp.line == line
                    && cp.last_line == last_line
                {
                    found.push(child_path.clone());
                }
                stack.push((c, child_path));
            }
        }
        found
    }

    /// A digest of prototype `i`'s code and of everything nested in it, for telling whether
    /// two versions of a function are the same code: equal when they differ only in line
    /// information (where each function starts and ends, which line each instruction came
    /// from) and in the chunk's name, so moving a function (blank lines, comments above it,
    /// a renamed file) is not an edit. It covers the instructions, the constants (Lua 5.5's
    /// strings by contents, not by the index a dump refers to them with), the parameter
    /// count, vararg flag and frame size, the upvalue descriptors and names, the local
    /// variables' names and ranges, and each nested prototype's digest in order. Computed
    /// when the dump is parsed; `None` if `i` does not exist. Only comparable between dumps
    /// of the same VM.
    pub fn code_digest(&self, i: usize) -> Option<u64> {
        self.protos.get(i).map(|p| p.digest)
    }

    /// The bytes that define prototype `i`, for telling whether two versions differ: its
    /// record (with line information) and those nested in it. Lua 5.5's records refer to
    /// strings saved earlier in the dump, so there this is the record written anew with its
    /// strings in it (as `extract` writes it), which is why it may be owned. Empty if `i`
    /// does not exist.
    pub fn body(&self, i: usize) -> Cow<'_, [u8]> {
        if let Format::Lua55 { .. } = self.format {
            let mut e = Emit55::new(self.header);
            return match self.emit55(&mut e, i, None, 0) {
                Some(()) => Cow::Owned(e.out),
                None => Cow::Borrowed(&[]),
            };
        }
        Cow::Borrowed(self.raw(i))
    }

    /// The bytes of prototype `i`'s record as they are in the dump.
    fn raw(&self, i: usize) -> &[u8] {
        self.protos.get(i).and_then(|p| self.bytes.get(p.range.0..p.range.1)).unwrap_or_default()
    }

    /// A loadable binary chunk whose main function is prototype `i`, named `source` (as the
    /// original chunk was). `None` if `i` does not exist.
    pub fn extract(&self, i: usize, source: &[u8]) -> Option<Vec<u8>> {
        let p = self.protos.get(i)?;
        let body = self.raw(i);
        let mut out = Vec::with_capacity(self.header + body.len() + source.len() + 8);
        match self.format {
            Format::Lua54 | Format::Lua53 { .. } => {
                // header without the main function's upvalue count, then this one's
                out.extend_from_slice(self.bytes.get(..self.header.checked_sub(1)?)?);
                out.push(u8::try_from(p.upvalues).ok()?);
                // a nested function's record starts with a NULL source (inherited from its
                // parent): give it the chunk's, so messages keep naming the file
                let mut c = Cursor { b: body, at: 0 };
                skip_string(&mut c, self.format).ok()?;
                write_string(&mut out, source, self.format);
                out.extend_from_slice(body.get(c.at..)?);
            }
            Format::Lua55 { .. } => {
                out.extend_from_slice(self.bytes.get(..self.header.checked_sub(1)?)?);
                out.push(u8::try_from(p.upvalues).ok()?);
                let mut e = Emit55 { out, base: 0, saved: HashMap::new() };
                // the record's source (a reference to a string saved before it) becomes
                // `source`, and so does every nested one's that was the same string (Lua 5.5
                // writes each function's source; 5.4 wrote NULL for "the parent's")
                let was = self.str55(self.recs.get(i)?.source);
                self.emit55(&mut e, i, Some((was, source)), 0)?;
                out = e.out;
            }
            Format::LuaJit => {
                out.extend_from_slice(self.bytes.get(..self.header)?);
                out.extend_from_slice(body);
                out.push(0);
            }
        }
        Some(out)
    }

    /// A Lua 5.5 string's contents (`None`: NULL).
    fn str55(&self, s: Str) -> Option<&[u8]> {
        s.and_then(|(a, b)| self.bytes.get(a..b))
    }

    /// Writes prototype `i`'s record and those nested in it, as ldump.c would at this offset:
    /// strings in full the first time, by index after; `rename` replaces a source (`None`:
    /// NULL) by another. `None` if `i` does not exist.
    fn emit55<'a>(
        &'a self,
        e: &mut Emit55<'a>,
        i: usize,
        rename: Option<(Option<&'a [u8]>, &'a [u8])>,
        depth: usize,
    ) -> Option<()> {
        let (r, p) = (self.recs.get(i)?, self.protos.get(i)?);
        if depth > MAX_DEPTH {
            return None;
        }
        let Format::Lua55 { int, inst, .. } = self.format else { return None };
        let bytes = |(a, b): (usize, usize)| self.bytes.get(a..b);
        e.int(r.line);
        e.int(r.last_line);
        e.out.extend_from_slice(&r.head);
        e.varint(r.n_code as u64);
        e.align(inst);
        e.out.extend_from_slice(bytes(r.code)?);
        e.varint(r.k.len() as u64);
        for k in &r.k {
            match *k {
                K55::Nil => e.out.push(VNIL),
                K55::False => e.out.push(VFALSE),
                K55::True => e.out.push(VTRUE),
                K55::Int(x) => {
                    e.out.push(VNUMINT);
                    e.varint(x);
                }
                K55::Float(f) => {
                    e.out.push(VNUMFLT);
                    e.out.extend_from_slice(bytes(f)?);
                }
                K55::Str(tag, s) => {
                    e.out.push(tag);
                    e.string(Some(bytes(s)?));
                }
            }
        }
        e.varint(u64::from(p.upvalues));
        e.out.extend_from_slice(bytes(r.upvalues)?);
        e.varint(p.children.len() as u64);
        for &c in &p.children {
            self.emit55(e, c, rename, depth + 1)?;
        }
        let source = self.str55(r.source);
        match rename {
            Some((was, now)) if was == source => e.string(Some(now)),
            _ => e.string(source),
        }
        e.varint(r.lineinfo.1.saturating_sub(r.lineinfo.0) as u64);
        e.out.extend_from_slice(bytes(r.lineinfo)?);
        e.varint(r.n_abs as u64);
        if r.n_abs > 0 {
            e.align(int);
            e.out.extend_from_slice(bytes(r.abslineinfo)?);
        }
        e.varint(r.locvars.len() as u64);
        for &(name, startpc, endpc) in &r.locvars {
            e.string(self.str55(name));
            e.int(startpc);
            e.int(endpc);
        }
        e.varint(r.upnames.len() as u64);
        for &name in &r.upnames {
            e.string(self.str55(name));
        }
        Some(())
    }
}

/// Output of `Dump::emit55`.
struct Emit55<'a> {
    out: Vec<u8>,
    /// Offset of `out` in the chunk it will be part of (alignment counts from the chunk's
    /// start).
    base: usize,
    /// Strings written in full so far, and the index each was saved with.
    saved: HashMap<&'a [u8], u64>,
}

impl<'a> Emit55<'a> {
    /// For a record at `base` of a chunk, with no strings saved before it.
    fn new(base: usize) -> Self {
        Emit55 { out: Vec::new(), base, saved: HashMap::new() }
    }

    fn varint(&mut self, x: u64) {
        let groups = msb_groups(x);
        let last = groups.len().saturating_sub(1);
        self.out
            .extend(groups.iter().enumerate().map(|(i, &g)| if i < last { g | 0x80 } else { g }));
    }

    fn int(&mut self, x: u32) {
        self.varint(u64::from(x));
    }

    fn align(&mut self, align: usize) {
        if align > 0 {
            let pad = (align - (self.base + self.out.len()) % align) % align;
            self.out.resize(self.out.len() + pad, 0);
        }
    }

    /// ldump.c's dumpString: size 0 and an index for NULL (0) or a string saved before,
    /// else size + 1 and the contents with their NUL (saving the string).
    fn string(&mut self, s: Option<&'a [u8]>) {
        let Some(s) = s else {
            self.out.extend_from_slice(&[0, 0]);
            return;
        };
        if let Some(&idx) = self.saved.get(s) {
            self.varint(0);
            self.varint(idx);
            return;
        }
        self.varint(s.len() as u64 + 1);
        self.out.extend_from_slice(s);
        self.out.push(0);
        let idx = self.saved.len() as u64 + 1;
        self.saved.insert(s, idx);
    }
}

/// `x` in groups of 7 bits, most significant first (at least one group).
fn msb_groups(mut x: u64) -> Vec<u8> {
    let mut groups = Vec::with_capacity(10);
    loop {
        groups.push((x & 0x7f) as u8);
        x >>= 7;
        if x == 0 {
            break;
        }
    }
    groups.reverse();
    groups
}

fn skip_string(c: &mut Cursor, format: Format) -> R<()> {
    match format {
        Format::Lua54 => {
            let n = c.size54()?;
            c.skip(n.saturating_sub(1))
        }
        Format::Lua53 { size_t, .. } => {
            let mut n = usize::from(c.byte()?);
            if n == 0xff {
                n = c.uint(size_t)?;
            }
            c.skip(n.saturating_sub(1))
        }
        Format::Lua55 { .. } | Format::LuaJit => Err("no such strings here"),
    }
}

fn write_string(out: &mut Vec<u8>, s: &[u8], format: Format) {
    let n = s.len() + 1;
    match format {
        Format::Lua54 => {
            let mut groups = msb_groups(n as u64);
            if let Some(last) = groups.last_mut() {
                *last |= 0x80;
            }
            out.extend_from_slice(&groups);
        }
        Format::Lua53 { size_t, .. } => {
            if n < 0xff {
                out.push(n as u8);
            } else {
                out.push(0xff);
                out.extend_from_slice(&(n as u64).to_le_bytes()[..size_t.min(8)]);
            }
        }
        Format::Lua55 { .. } | Format::LuaJit => {}
    }
    out.extend_from_slice(s);
}

fn parse_5x(bytes: &[u8], format: Format) -> R<Dump> {
    // signature, version, format, LUAC_DATA, then the sizes and the check numbers
    let header = match format {
        Format::Lua54 => 4 + 1 + 1 + 6 + 3 + 8 + 8,
        Format::Lua53 { .. } => 4 + 1 + 1 + 6 + 5 + 8 + 8,
        Format::Lua55 { .. } | Format::LuaJit => return Err("not a 5.3/5.4 dump"),
    } + 1; // the main function's upvalue count
    let mut c = Cursor { b: bytes, at: header };
    if header > bytes.len() {
        return Err("truncated dump");
    }
    let mut protos = Vec::new();
    let root = parse_fn_5x(&mut c, format, &mut protos, 0)?;
    Ok(Dump { bytes: bytes.to_vec(), format, header, protos, root, recs: Vec::new() })
}

/// Parses one function record (and, recursively, its nested ones). Recursion depth is the
/// nesting depth of the source, which Lua's own parser limits (LUAI_MAXCCALLS); garbage
/// nested deeper is refused.
fn parse_fn_5x(c: &mut Cursor, format: Format, protos: &mut Vec<Proto>, depth: usize) -> R<usize> {
    if depth > MAX_DEPTH {
        return Err("prototypes nested too deep");
    }
    let start = c.at;
    let int = |c: &mut Cursor| -> R<usize> {
        match format {
            Format::Lua54 => c.size54(),
            Format::Lua53 { int, .. } => c.uint(int),
            Format::Lua55 { .. } | Format::LuaJit => Err("not a 5.3/5.4 dump"),
        }
    };
    skip_string(c, format)?; // source
    let line = u32::try_from(int(c)?).map_err(|_| "bad line")?;
    let last_line = u32::try_from(int(c)?).map_err(|_| "bad line")?;
    // what the code digest covers: from here up to the nested prototypes, ...
    let code = c.at;
    c.skip(3)?; // numparams, is_vararg, maxstacksize
    let n_code = int(c)?;
    c.skip(n_code.checked_mul(4).ok_or("bad size")?)?;
    for _ in 0..int(c)? {
        // constants: a type tag, then its payload
        match (format, c.byte()?) {
            (_, 0) => {}                             // nil
            (Format::Lua54, 1 | 17) => {}            // false, true
            (Format::Lua53 { .. }, 1) => c.skip(1)?, // boolean and its value
            (_, 3 | 19) => c.skip(8)?,               // integer or float
            (_, 4 | 20) => skip_string(c, format)?,  // short or long string
            _ => return Err("unknown constant type"),
        }
    }
    let upvalues = int(c)?;
    let per_upvalue = if format == Format::Lua54 { 3 } else { 2 };
    c.skip(upvalues.checked_mul(per_upvalue).ok_or("bad size")?)?;
    let me = protos.len();
    protos.push(Proto {
        line,
        last_line,
        upvalues: u32::try_from(upvalues).map_err(|_| "bad size")?,
        children: Vec::new(),
        range: (start, start),
        digest: 0,
    });
    let code = c.b.get(code..c.at).ok_or("truncated dump")?;
    let n = int(c)?;
    let mut children = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        children.push(parse_fn_5x(c, format, protos, depth + 1)?);
    }
    // debug information
    match format {
        Format::Lua54 => {
            let lineinfo = int(c)?;
            c.skip(lineinfo)?;
            for _ in 0..int(c)? {
                int(c)?; // pc
                int(c)?; // line
            }
        }
        Format::Lua53 { int: isz, .. } => {
            let lineinfo = int(c)?;
            c.skip(lineinfo.checked_mul(isz).ok_or("bad size")?)?;
        }
        Format::Lua55 { .. } | Format::LuaJit => {}
    }
    // ... and from here to the end (the nested ones by their digests)
    let names = c.at;
    for _ in 0..int(c)? {
        skip_string(c, format)?; // local name
        int(c)?;
        int(c)?;
    }
    for _ in 0..int(c)? {
        skip_string(c, format)?; // upvalue name
    }
    let mut h = Fnv::new();
    h.block(code);
    h.children(&children, protos)?;
    h.block(c.b.get(names..c.at).ok_or("truncated dump")?);
    let p = protos.get_mut(me).ok_or("lost prototype")?;
    p.children = children;
    p.range = (start, c.at);
    p.digest = h.0;
    Ok(me)
}

fn parse_55(bytes: &[u8]) -> R<Dump> {
    // signature, version, format, LUAC_DATA, then each of int, Instruction, lua_Integer and
    // lua_Number: its size and a check number of that size
    let mut c = Cursor { b: bytes, at: 0 };
    c.skip(4 + 1 + 1 + 6)?;
    let mut sizes = [0usize; 4];
    for size in &mut sizes {
        *size = usize::from(c.byte()?);
        c.skip(*size)?;
    }
    let [int, inst, _, num] = sizes;
    // ldump.c aligns to sizeof(int) and sizeof(Instruction), at most sizeof(lua_Integer)
    if !(1..=8).contains(&int) || !(1..=8).contains(&inst) {
        return Err("unsupported sizes");
    }
    let format = Format::Lua55 { int, inst, num };
    c.byte()?; // the main function's upvalue count
    let header = c.at;
    let mut p = Parse55 { c, format, strings: Vec::new(), protos: Vec::new(), recs: Vec::new() };
    let root = p.function(0)?;
    Ok(Dump { bytes: bytes.to_vec(), format, header, protos: p.protos, root, recs: p.recs })
}

/// Reads a Lua 5.5 dump as lundump.c does.
struct Parse55<'a> {
    c: Cursor<'a>,
    format: Format,
    /// The strings saved so far, by index - 1.
    strings: Vec<(usize, usize)>,
    protos: Vec<Proto>,
    recs: Vec<Rec55>,
}

impl Parse55<'_> {
    /// lundump.c's loadString.
    fn string(&mut self) -> R<Str> {
        let size = usize::try_from(self.c.varint55(u64::MAX)?).map_err(|_| "bad size")?;
        let Some(len) = size.checked_sub(1) else {
            // a string saved before, or NULL
            let idx = self.c.varint55(u64::MAX)?;
            let Some(k) = idx.checked_sub(1) else { return Ok(None) };
            let k = usize::try_from(k).map_err(|_| "invalid string index")?;
            return self.strings.get(k).map(|&s| Some(s)).ok_or("invalid string index");
        };
        let (start, _) = self.c.span(size)?; // the contents and a NUL
        let s = (start, start + len);
        self.strings.push(s);
        Ok(Some(s))
    }

    /// lundump.c's loadFunction: one record and, recursively, those nested in it.
    fn function(&mut self, depth: usize) -> R<usize> {
        if depth > MAX_DEPTH {
            return Err("prototypes nested too deep");
        }
        let Format::Lua55 { int, inst, num } = self.format else { return Err("not a 5.5 dump") };
        let start = self.c.at;
        let line = self.c.int55()?;
        let last_line = self.c.int55()?;
        let head = [self.c.byte()?, self.c.byte()?, self.c.byte()?];
        let (n_code, len) = self.c.count55(inst)?;
        self.c.align55(inst)?;
        let code = self.c.span(len)?;
        let k = self.constants(num)?;
        let (n_up, len) = self.c.count55(3)?;
        let upvalues = self.c.span(len)?;
        let me = self.protos.len();
        self.protos.push(Proto {
            line,
            last_line,
            upvalues: u32::try_from(n_up).map_err(|_| "bad size")?,
            children: Vec::new(),
            range: (start, start),
            digest: 0,
        });
        self.recs.push(Rec55::default()); // (filled in below)
        let (n, _) = self.c.count55(1)?;
        let mut children = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            children.push(self.function(depth + 1)?);
        }
        let source = self.string()?;
        let (_, len) = self.c.count55(1)?;
        let lineinfo = self.c.span(len)?;
        let (n_abs, len) = self.c.count55(2 * int)?;
        if n_abs > 0 {
            self.c.align55(int)?;
        }
        let abslineinfo = self.c.span(len)?;
        let (locvars, upnames) = self.names(n_up)?;
        let rec = Rec55 {
            line,
            last_line,
            head,
            n_code,
            code,
            k,
            upvalues,
            source,
            lineinfo,
            n_abs,
            abslineinfo,
            locvars,
            upnames,
        };
        let digest = self.digest(&rec, &children)?;
        let p = self.protos.get_mut(me).ok_or("lost prototype")?;
        p.children = children;
        p.range = (start, self.c.at);
        p.digest = digest;
        *self.recs.get_mut(me).ok_or("lost prototype")? = rec;
        Ok(me)
    }

    /// A record's constants.
    fn constants(&mut self, num: usize) -> R<Vec<K55>> {
        let (n_k, _) = self.c.count55(1)?;
        let mut k = Vec::with_capacity(n_k.min(1024));
        for _ in 0..n_k {
            k.push(match self.c.byte()? {
                VNIL => K55::Nil,
                VFALSE => K55::False,
                VTRUE => K55::True,
                VNUMFLT => K55::Float(self.c.span(num)?),
                VNUMINT => K55::Int(self.c.varint55(u64::MAX)?),
                tag @ (VSHRSTR | VLNGSTR) => {
                    K55::Str(tag, self.string()?.ok_or("bad constant string")?)
                }
                _ => return Err("unknown constant type"),
            });
        }
        Ok(k)
    }

    /// A record's local variables (name, start pc, end pc) and upvalue names.
    #[allow(clippy::type_complexity)]
    fn names(&mut self, n_up: usize) -> R<(Vec<(Str, u32, u32)>, Vec<Str>)> {
        let (n_loc, _) = self.c.count55(1)?;
        let mut locvars = Vec::with_capacity(n_loc.min(1024));
        for _ in 0..n_loc {
            let name = self.string()?;
            locvars.push((name, self.c.int55()?, self.c.int55()?));
        }
        // any count but 0 means "a name for each upvalue"
        let (n_names, _) = self.c.count55(1)?;
        let n_names = if n_names == 0 { 0 } else { n_up };
        let mut upnames = Vec::with_capacity(n_names.min(1024));
        for _ in 0..n_names {
            upnames.push(self.string()?);
        }
        Ok((locvars, upnames))
    }

    /// See `Dump::code_digest`: everything but the lines and the source, strings resolved.
    fn digest(&self, r: &Rec55, children: &[usize]) -> R<u64> {
        let bytes = |(a, b): (usize, usize)| self.c.b.get(a..b).ok_or("truncated dump");
        let string = |h: &mut Fnv, s: Str| -> R<()> {
            match s {
                None => h.bytes(&[0]),
                Some(s) => {
                    h.bytes(&[1]);
                    h.block(bytes(s)?);
                }
            }
            Ok(())
        };
        let mut h = Fnv::new();
        let [params, flag, stack] = r.head;
        h.bytes(&[params, flag & !PF_FIXED, stack]);
        h.u64(r.n_code as u64);
        h.block(bytes(r.code)?);
        h.u64(r.k.len() as u64);
        for k in &r.k {
            match *k {
                K55::Nil => h.bytes(&[VNIL]),
                K55::False => h.bytes(&[VFALSE]),
                K55::True => h.bytes(&[VTRUE]),
                K55::Int(x) => {
                    h.bytes(&[VNUMINT]);
                    h.u64(x);
                }
                K55::Float(f) => {
                    h.bytes(&[VNUMFLT]);
                    h.block(bytes(f)?);
                }
                K55::Str(tag, s) => {
                    h.bytes(&[tag]);
                    h.block(bytes(s)?);
                }
            }
        }
        h.block(bytes(r.upvalues)?);
        h.children(children, &self.protos)?;
        h.u64(r.locvars.len() as u64);
        for &(name, startpc, endpc) in &r.locvars {
            string(&mut h, name)?;
            h.u64(u64::from(startpc));
            h.u64(u64::from(endpc));
        }
        h.u64(r.upnames.len() as u64);
        for &name in &r.upnames {
            string(&mut h, name)?;
        }
        Ok(h.0)
    }
}

/// Skips a LuaJIT prototype's constants (`kgc` GC constants, `kn` numbers); returns how
/// many of the GC constants are child prototypes.
fn skip_jit_constants(d: &mut Cursor, kgc: u32, kn: u32) -> R<usize> {
    let mut n_children = 0usize;
    for _ in 0..kgc {
        match d.uleb()? {
            0 => n_children += 1, // child prototype
            1 => {
                // template table: array part, then hash part (key and value each)
                let narray = d.uleb()?;
                let nhash = d.uleb()?;
                for _ in 0..(u64::from(narray) + 2 * u64::from(nhash)) {
                    match d.uleb()? {
                        0..=2 => {}
                        3 => {
                            d.uleb()?;
                        }
                        4 => {
                            d.uleb()?;
                            d.uleb()?;
                        }
                        t => d.skip(t as usize - 5)?,
                    }
                }
            }
            2 | 3 => {
                d.uleb()?;
                d.uleb()?;
            }
            4 => {
                for _ in 0..4 {
                    d.uleb()?;
                }
            }
            t => d.skip(t as usize - 5)?, // string
        }
    }
    for _ in 0..kn {
        // an integer, or (low bit of the first byte set) a double's low word, high word
        if d.b.get(d.at).ok_or("truncated dump")? & 1 != 0 {
            d.skip_uleb()?;
        }
        d.skip_uleb()?;
    }
    Ok(n_children)
}

/// The size of a LuaJIT prototype's lineinfo: one entry per instruction, each as wide as
/// the line count needs (none in a stripped dump).
fn jit_lineinfo_size(sizedbg: usize, bc: usize, numline: u32) -> R<usize> {
    let width = if numline < 256 {
        1
    } else if numline < 65536 {
        2
    } else {
        4
    };
    if sizedbg == 0 { Ok(0) } else { bc.checked_mul(width).ok_or("bad size") }
}

fn parse_jit(bytes: &[u8]) -> R<Dump> {
    const FLAG_STRIP: u32 = 2;
    let mut c = Cursor { b: bytes, at: 4 };
    let flags = c.uleb()?;
    if flags & FLAG_STRIP == 0 {
        let n = c.uleb()? as usize;
        c.skip(n)?; // chunk name
    }
    let header = c.at;
    let mut protos: Vec<Proto> = Vec::new();
    // Prototypes come children first; each one's KGC_CHILD constants take the most recent
    // finished prototypes off this stack.
    let mut stack: Vec<usize> = Vec::new();
    loop {
        let record = c.at;
        let len = c.uleb()? as usize;
        if len == 0 {
            break;
        }
        let data = c.take(len)?;
        let mut d = Cursor { b: data, at: 0 };
        d.skip(3)?; // flags, numparams, framesize
        let upvalues = u32::from(d.byte()?);
        let kgc = d.uleb()?;
        let kn = d.uleb()?;
        let bc = d.uleb()? as usize;
        // the code digest covers the fields so far, not the debug header's lines
        let head = data.get(..d.at).ok_or("truncated dump")?;
        let (mut sizedbg, mut line, mut numline) = (0, 0, 0);
        if flags & FLAG_STRIP == 0 {
            sizedbg = d.uleb()? as usize;
            if sizedbg != 0 {
                line = d.uleb()?;
                numline = d.uleb()?;
            }
        }
        let code = d.at;
        d.skip(bc.checked_mul(4).ok_or("bad size")?)?;
        d.skip(upvalues as usize * 2)?;
        let n_children = skip_jit_constants(&mut d, kgc, kn)?;
        // debug information: lineinfo (one entry per instruction, each as wide as the line
        // count needs), then upvalue names and local variables (which the digest covers)
        let debug = d.at;
        if data.len() - debug != sizedbg {
            return Err("bad prototype length");
        }
        let lineinfo = jit_lineinfo_size(sizedbg, bc, numline)?;
        let names = data.get(debug.checked_add(lineinfo).ok_or("bad size")?..);
        let mut h = Fnv::new();
        h.block(head);
        h.block(data.get(code..debug).ok_or("truncated dump")?);
        let cut = stack.len().checked_sub(n_children).ok_or("child prototype missing")?;
        let children: Vec<usize> = stack.drain(cut..).collect();
        h.children(&children, &protos)?;
        h.block(names.ok_or("bad lineinfo size")?);
        let start =
            children.first().and_then(|&f| protos.get(f)).map_or(record, |f| f.range.0.min(record));
        protos.push(Proto {
            line,
            last_line: line.saturating_add(numline),
            upvalues,
            children,
            range: (start, c.at),
            digest: h.0,
        });
        stack.push(protos.len() - 1);
    }
    let root = match stack.as_slice() {
        [root] => *root,
        _ => return Err("malformed prototype tree"),
    };
    Ok(Dump {
        bytes: bytes.to_vec(),
        format: Format::LuaJit,
        header,
        protos,
        root,
        recs: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Dump {
        let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        Dump::parse(&std::fs::read(path).unwrap()).unwrap()
    }

    /// factory.lua: main -> [M.new -> [counter, getter], M.twice -> [outer -> [inner]]]
    fn check_tree(d: &Dump) {
        let root = &d.protos[d.root];
        assert_eq!(root.children.len(), 2, "{d:?}");
        let new = d.follow(&[0]).unwrap();
        assert_eq!((d.protos[new].line, d.protos[new].last_line), (3, 9));
        let counter = d.follow(&[0, 0]).unwrap();
        assert_eq!((d.protos[counter].line, d.protos[counter].last_line), (5, 8));
        let getter = d.follow(&[0, 1]).unwrap();
        assert_eq!(d.protos[getter].line, 8);
        let inner = d.follow(&[1, 0, 0]).unwrap();
        assert_eq!((d.protos[inner].line, d.protos[inner].upvalues), (11, 1));
        assert_eq!(d.follow(&[1, 0, 0, 0]), None);
        assert_eq!(d.find_lines(d.root, 5, 8), vec![vec![0, 0]]);
        assert_eq!(d.find_lines(new, 5, 8), vec![vec![0]]);
        assert!(d.find_lines(d.root, 99, 100).is_empty());
    }

    #[test]
    fn lua54_tree() {
        check_tree(&fixture("factory.54.luac"));
    }

    #[test]
    fn lua53_tree() {
        check_tree(&fixture("factory.53.luac"));
    }

    #[test]
    fn lua55_tree() {
        check_tree(&fixture("factory.55.luac"));
    }

    #[test]
    fn luajit_tree() {
        check_tree(&fixture("factory.jit.luac"));
    }

    #[test]
    fn extracted_chunks_parse_as_their_prototype() {
        for name in ["factory.54.luac", "factory.53.luac", "factory.55.luac", "factory.jit.luac"] {
            let d = fixture(name);
            let counter = d.follow(&[0, 0]).unwrap();
            let chunk = d.extract(counter, b"@factory.lua").unwrap();
            let e = Dump::parse(&chunk).unwrap();
            assert_eq!(e.protos[e.root].line, 5, "{name}");
            assert_eq!(e.protos[e.root].upvalues, 1, "{name}");
            assert!(e.protos[e.root].children.is_empty());
            let twice = d.follow(&[1]).unwrap();
            let e = Dump::parse(&d.extract(twice, b"@factory.lua").unwrap()).unwrap();
            assert_eq!(e.follow(&[0, 0]).map(|i| e.protos[i].line), Some(11), "{name}");
        }
    }

    /// Lua 5.5: the strings a nested record refers to are written into its chunk, and the
    /// chunk is what ldump.c would write for that function (the real 5.5.1 interpreter's
    /// `string.dump(load(chunk))` gives back the same bytes; checked by hand, see the commit).
    #[test]
    fn lua55_extracts_self_contained_chunks() {
        let bytes = read("factory.55.luac");
        let d = Dump::parse(&bytes).unwrap();
        // the whole chunk comes out as it went in
        assert_eq!(d.extract(d.root, b"@factory.lua").unwrap(), bytes);
        for i in 0..d.protos.len() {
            let chunk = d.extract(i, b"@factory.lua").unwrap();
            let e = Dump::parse(&chunk).unwrap();
            assert_eq!(e.protos.len(), count(&d, i), "{i}");
            assert_eq!(e.protos[e.root].line, d.protos[i].line);
            // sources: every record names the chunk; the first one in full, then by index
            for r in &e.recs {
                assert_eq!(e.str55(r.source), Some(&b"@factory.lua"[..]), "{i}");
            }
            // extracting again at the new offsets changes nothing
            assert_eq!(e.extract(e.root, b"@factory.lua").unwrap(), chunk, "{i}");
            // the string constants and names came along
            let upnames: Vec<_> = e.recs[e.root].upnames.iter().map(|&s| e.str55(s)).collect();
            assert_eq!(upnames.len(), d.protos[i].upvalues as usize);
            assert!(upnames.iter().all(Option::is_some));
        }
        let getter = d.follow(&[0, 1]).unwrap();
        let e = Dump::parse(&d.extract(getter, b"@x").unwrap()).unwrap();
        let k = |e: &Dump, s: &K55| match *s {
            K55::Str(_, s) => e.str55(Some(s)).map(<[u8]>::to_vec),
            _ => None,
        };
        let strings: Vec<_> = e.recs[e.root].k.iter().filter_map(|s| k(&e, s)).collect();
        assert_eq!(strings, vec![b"k".to_vec()]);
        assert_eq!(e.str55(e.recs[e.root].source), Some(&b"@x"[..]));
        // the same prototype in another place of the chunk has the same body
        assert_eq!(
            d.body(getter),
            Dump::parse(&d.extract(getter, b"@factory.lua").unwrap()).unwrap().body(0)
        );
    }

    #[test]
    fn luajit_line_range_past_u32_is_not_a_panic() {
        // one prototype: no code, firstline 0xffffffff, numline 1, a debug byte
        let record = [0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff, 0x0f, 1, 0];
        let mut dump = b"\x1bLJ\x02\x00\x00".to_vec();
        dump.push(record.len() as u8);
        dump.extend_from_slice(&record);
        dump.push(0);
        let d = Dump::parse(&dump).unwrap();
        assert_eq!(d.protos[d.root].last_line, u32::MAX);
    }

    const VMS: [&str; 4] = ["53", "54", "55", "jit"];

    /// shift.a.lua: main -> [M.make -> [the closure], M.name]
    const SHIFT_PATHS: [&[usize]; 4] = [&[], &[0], &[0, 0], &[1]];

    fn digest_at(d: &Dump, path: &[usize]) -> u64 {
        d.code_digest(d.follow(path).unwrap()).unwrap()
    }

    /// shift.b.lua is shift.a.lua with blank lines and a comment inserted: every function
    /// moved, the closure grew past 256 lines (Lua 5.4/5.5 add absolute line information,
    /// LuaJIT two-byte lineinfo) and the chunk has another name. Same code: same digests.
    #[test]
    fn moved_lines_keep_the_code_digest() {
        for vm in VMS {
            let a = fixture(&format!("shift.a.{vm}.luac"));
            let b = fixture(&format!("shift.b.{vm}.luac"));
            for path in SHIFT_PATHS {
                let (ia, ib) = (a.follow(path).unwrap(), b.follow(path).unwrap());
                assert_eq!(a.code_digest(ia), b.code_digest(ib), "{vm} {path:?}");
                // the records do differ: lines
                assert_ne!(a.body(ia), b.body(ib), "{vm} {path:?}");
            }
            let closure = (a.follow(&[0, 0]).unwrap(), b.follow(&[0, 0]).unwrap());
            assert_eq!(a.protos[closure.0].line, 5, "{vm}");
            assert_eq!(b.protos[closure.1].line, 7, "{vm}");
            assert_eq!(b.protos[closure.1].last_line, 311, "{vm}");
            // the digests tell the prototypes of one dump apart
            let mut all: Vec<u64> = SHIFT_PATHS.iter().map(|p| digest_at(&a, p)).collect();
            all.sort_unstable();
            all.dedup();
            assert_eq!(all.len(), SHIFT_PATHS.len(), "{vm}");
        }
    }

    /// Versions of shift.a.lua on the same lines: one constant changed (edit), the local the
    /// closure captures renamed (rename: the same instructions, other names), one parameter
    /// more (params). The changed function and those it is nested in get another digest,
    /// M.name keeps its own.
    #[test]
    fn edits_change_the_code_digest() {
        for vm in VMS {
            let a = fixture(&format!("shift.a.{vm}.luac"));
            for edit in ["edit", "rename", "params"] {
                let e = fixture(&format!("{edit}.{vm}.luac"));
                for path in [&[][..], &[0], &[0, 0]] {
                    assert_ne!(digest_at(&a, path), digest_at(&e, path), "{vm} {edit} {path:?}");
                }
                assert_eq!(digest_at(&a, &[1]), digest_at(&e, &[1]), "{vm} {edit}");
            }
        }
    }

    /// Extracting a prototype changes its chunk (name, offsets, Lua 5.5's string indices),
    /// not its code.
    #[test]
    fn extracted_prototypes_keep_their_code_digest() {
        for vm in VMS {
            for name in ["factory", "shift.b"] {
                let d = fixture(&format!("{name}.{vm}.luac"));
                for i in 0..d.protos.len() {
                    let e = Dump::parse(&d.extract(i, b"=elsewhere").unwrap()).unwrap();
                    assert_eq!(e.code_digest(e.root), d.code_digest(i), "{vm} {name} {i}");
                }
                assert_eq!(d.code_digest(d.protos.len()), None);
            }
        }
    }

    /// Prototypes in `i`'s subtree, `i` included.
    fn count(d: &Dump, i: usize) -> usize {
        1 + d.protos[i].children.iter().map(|&c| count(d, c)).sum::<usize>()
    }

    fn read(name: &str) -> Vec<u8> {
        std::fs::read(format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(Dump::parse(b"return 1").is_err());
        assert!(Dump::parse(b"\x1bLua\x51").is_err());
        for vm in VMS {
            let good = read(&format!("shift.b.{vm}.luac"));
            for cut in 0..good.len() {
                let _ = Dump::parse(&good[..cut]);
            }
            let mut flipped = good.clone();
            for i in 0..flipped.len() {
                for bits in [0xff, 0x80, 0x01] {
                    flipped[i] ^= bits;
                    if let Ok(d) = Dump::parse(&flipped) {
                        for p in 0..d.protos.len() {
                            let _ = d.body(p);
                            let _ = d.extract(p, b"@x");
                        }
                    }
                    flipped[i] ^= bits;
                }
            }
        }
    }
}
