//! Function prototypes inside `string.dump` output (Lua 5.3, 5.4 and LuaJIT formats): the
//! tree of nested prototypes with their line ranges, and how to cut one nested prototype out
//! as a chunk of its own. This is how a closure made before a reload (by a factory such as
//! `function M.new() return function() ... end end`) gets a closure of the new version of
//! its prototype: the C API cannot make a closure of a nested prototype, but `load` can
//! load one that stands alone. Pure: bytes in, bytes out, every read bounds-checked.

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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Lua53 { int: usize, size_t: usize },
    Lua54,
    LuaJit,
}

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

    /// The bytes that define prototype `i` (for telling whether two versions differ).
    pub fn body(&self, i: usize) -> &[u8] {
        self.protos.get(i).and_then(|p| self.bytes.get(p.range.0..p.range.1)).unwrap_or_default()
    }

    /// A loadable binary chunk whose main function is prototype `i`, named `source` (as the
    /// original chunk was). `None` if `i` does not exist.
    pub fn extract(&self, i: usize, source: &[u8]) -> Option<Vec<u8>> {
        let p = self.protos.get(i)?;
        let body = self.body(i);
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
            Format::LuaJit => {
                out.extend_from_slice(self.bytes.get(..self.header)?);
                out.extend_from_slice(body);
                out.push(0);
            }
        }
        Some(out)
    }
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
        Format::LuaJit => Err("no strings here"),
    }
}

fn write_string(out: &mut Vec<u8>, s: &[u8], format: Format) {
    let n = s.len() + 1;
    match format {
        Format::Lua54 => {
            let mut groups = Vec::new();
            let mut x = n;
            loop {
                groups.push((x & 0x7f) as u8);
                x >>= 7;
                if x == 0 {
                    break;
                }
            }
            groups.reverse();
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
        Format::LuaJit => {}
    }
    out.extend_from_slice(s);
}

fn parse_5x(bytes: &[u8], format: Format) -> R<Dump> {
    // signature, version, format, LUAC_DATA, then the sizes and the check numbers
    let header = match format {
        Format::Lua54 => 4 + 1 + 1 + 6 + 3 + 8 + 8,
        Format::Lua53 { .. } => 4 + 1 + 1 + 6 + 5 + 8 + 8,
        Format::LuaJit => return Err("not a 5.x dump"),
    } + 1; // the main function's upvalue count
    let mut c = Cursor { b: bytes, at: header };
    if header > bytes.len() {
        return Err("truncated dump");
    }
    let mut protos = Vec::new();
    let root = parse_fn_5x(&mut c, format, &mut protos)?;
    Ok(Dump { bytes: bytes.to_vec(), format, header, protos, root })
}

/// Parses one function record (and, recursively, its nested ones). Recursion depth is the
/// nesting depth of the source, which Lua's own parser limits (LUAI_MAXCCALLS).
fn parse_fn_5x(c: &mut Cursor, format: Format, protos: &mut Vec<Proto>) -> R<usize> {
    let start = c.at;
    let int = |c: &mut Cursor| -> R<usize> {
        match format {
            Format::Lua54 => c.size54(),
            Format::Lua53 { int, .. } => c.uint(int),
            Format::LuaJit => Err("not a 5.x dump"),
        }
    };
    skip_string(c, format)?; // source
    let line = u32::try_from(int(c)?).map_err(|_| "bad line")?;
    let last_line = u32::try_from(int(c)?).map_err(|_| "bad line")?;
    c.skip(3)?; // numparams, is_vararg, maxstacksize
    let code = int(c)?;
    c.skip(code.checked_mul(4).ok_or("bad size")?)?;
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
    });
    let n = int(c)?;
    let mut children = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        children.push(parse_fn_5x(c, format, protos)?);
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
        Format::LuaJit => {}
    }
    for _ in 0..int(c)? {
        skip_string(c, format)?; // local name
        int(c)?;
        int(c)?;
    }
    for _ in 0..int(c)? {
        skip_string(c, format)?; // upvalue name
    }
    let p = protos.get_mut(me).ok_or("lost prototype")?;
    p.children = children;
    p.range = (start, c.at);
    Ok(me)
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
        let len = c.uleb()? as usize;
        if len == 0 {
            break;
        }
        let record = c.at - uleb_len(len);
        let data = c.take(len)?;
        let mut d = Cursor { b: data, at: 0 };
        d.skip(3)?; // flags, numparams, framesize
        let upvalues = u32::from(d.byte()?);
        let kgc = d.uleb()?;
        d.uleb()?; // sizekn
        let bc = d.uleb()? as usize;
        let (mut line, mut numline) = (0, 0);
        if flags & FLAG_STRIP == 0 && d.uleb()? != 0 {
            line = d.uleb()?;
            numline = d.uleb()?;
        }
        d.skip(bc.checked_mul(4).ok_or("bad size")?)?;
        d.skip(upvalues as usize * 2)?;
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
        let cut = stack.len().checked_sub(n_children).ok_or("child prototype missing")?;
        let children: Vec<usize> = stack.drain(cut..).collect();
        let start =
            children.first().and_then(|&f| protos.get(f)).map_or(record, |f| f.range.0.min(record));
        protos.push(Proto {
            line,
            last_line: line + numline,
            upvalues,
            children,
            range: (start, c.at),
        });
        stack.push(protos.len() - 1);
    }
    let root = match stack.as_slice() {
        [root] => *root,
        _ => return Err("malformed prototype tree"),
    };
    Ok(Dump { bytes: bytes.to_vec(), format: Format::LuaJit, header, protos, root })
}

fn uleb_len(mut n: usize) -> usize {
    let mut len = 1;
    while n >= 0x80 {
        n >>= 7;
        len += 1;
    }
    len
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
    fn luajit_tree() {
        check_tree(&fixture("factory.jit.luac"));
    }

    #[test]
    fn extracted_chunks_parse_as_their_prototype() {
        for name in ["factory.54.luac", "factory.53.luac", "factory.jit.luac"] {
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

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let good =
            std::fs::read(format!("{}/tests/fixtures/factory.54.luac", env!("CARGO_MANIFEST_DIR")))
                .unwrap();
        for cut in 0..good.len() {
            let _ = Dump::parse(&good[..cut]);
        }
        assert!(Dump::parse(b"return 1").is_err());
        assert!(Dump::parse(b"\x1bLua\x51").is_err());
        let mut flipped = good.clone();
        for i in 0..flipped.len() {
            flipped[i] ^= 0xff;
            let _ = Dump::parse(&flipped);
            flipped[i] ^= 0xff;
        }
    }
}
