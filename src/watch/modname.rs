//! File path <-> module name through `package.path` templates, as `package.searchpath` resolves
//! them: a file is the file of module `a.b` if it is the first existing expansion of `a.b` in
//! `package.path`. Nothing here munges paths relative to a watched directory: any template
//! shape works (`?.lua`, `?/init.lua`, `lib/?/?.lua`, ...). The filesystem is passed in, so the
//! rules are tested without one.

/// Lua's directory separator and name mark (`LUA_DIRSEP`, `LUA_PATH_MARK`).
pub const DIRSEP: char = std::path::MAIN_SEPARATOR;
const MARK: char = '?';

/// One `package.path` template, split at its `?` marks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    /// As written (for the forward check, which must behave like `searchpath`).
    pub raw: String,
    /// The pieces between the marks, the first one made absolute and canonical.
    parts: Vec<String>,
}

impl Template {
    /// Splits `package.path` into templates. `resolve_dir` turns the directory part before
    /// the first mark (`./`, `/usr/share/lua/5.4/`, ...) into a canonical absolute directory;
    /// templates it cannot resolve (a directory that does not exist) are kept unresolved.
    pub fn parse(
        package_path: &str,
        resolve_dir: impl Fn(&str) -> Option<String>,
    ) -> Vec<Template> {
        package_path
            .split(';')
            .filter(|t| t.contains(MARK))
            .map(|raw| {
                let mut parts: Vec<String> = raw.split(MARK).map(str::to_owned).collect();
                if let Some(first) = parts.first_mut() {
                    let cut = first.rfind(DIRSEP).map_or(0, |i| i + 1);
                    let (dir, rest) = first.split_at(cut);
                    let dir = if dir.is_empty() { "." } else { dir };
                    if let Some(mut resolved) = resolve_dir(dir) {
                        if !resolved.ends_with(DIRSEP) {
                            resolved.push(DIRSEP);
                        }
                        resolved.push_str(rest);
                        *first = resolved;
                    }
                }
                Template { raw: raw.to_owned(), parts }
            })
            .collect()
    }

    /// The module name this template gives for `path`, if `path` fits it.
    pub fn name_for(&self, path: &str) -> Option<String> {
        let marks = self.parts.len().checked_sub(1).filter(|&k| k > 0)?;
        let fixed: usize = self.parts.iter().map(String::len).sum();
        let free = path.len().checked_sub(fixed)?;
        if free == 0 || free % marks != 0 {
            return None;
        }
        let first = self.parts.first()?;
        let capture = path.get(first.len()..first.len() + free / marks)?;
        let name = capture.replace(DIRSEP, ".");
        // Only names whose expansion is this very path (so `a.b.lua` is not module `a.b`).
        (self.expand_parts(&name) == path).then_some(name)
    }

    fn expand_parts(&self, name: &str) -> String {
        self.parts.join(&name.replace('.', &DIRSEP.to_string()))
    }

    /// `searchpath`'s expansion of `name` in the template as written.
    pub fn expand(&self, name: &str) -> String {
        self.raw.replace(MARK, &name.replace('.', &DIRSEP.to_string()))
    }
}

/// Every module name some template gives for a file, spelt any of the ways in `paths` (as
/// reported, canonical): a file can be several modules.
pub fn names_for(paths: &[&str], templates: &[Template]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for path in paths {
        for name in templates.iter().filter_map(|t| t.name_for(path)) {
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    names
}

/// The file `require(name)` would load through the path searcher: the first expansion that
/// `exists` accepts, as `package.searchpath` finds it.
pub fn search(name: &str, templates: &[Template], exists: impl Fn(&str) -> bool) -> Option<String> {
    templates.iter().map(|t| t.expand(name)).find(|p| exists(p))
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    fn resolve(dir: &str) -> Option<String> {
        match dir {
            "./" | "." => Some("/home/dev/game".into()),
            "/usr/share/lua/5.4/" => Some("/usr/share/lua/5.4".into()),
            "/link/" => Some("/real/".into()),
            _ => None,
        }
    }

    fn templates(p: &str) -> Vec<Template> {
        Template::parse(p, resolve)
    }

    #[test]
    fn plain_and_init_templates() {
        let t = templates("./?.lua;./?/init.lua;/usr/share/lua/5.4/?.lua");
        assert_eq!(names_for(&["/home/dev/game/a/b.lua"], &t), vec!["a.b"]);
        assert_eq!(names_for(&["/home/dev/game/pkg/init.lua"], &t), vec!["pkg.init", "pkg"]);
        assert_eq!(names_for(&["/usr/share/lua/5.4/json.lua"], &t), vec!["json"]);
        assert!(names_for(&["/elsewhere/x.lua"], &t).is_empty());
        assert_eq!(
            names_for(&["/link/a.lua", "/home/dev/game/a.lua"], &t),
            vec!["a"],
            "several spellings of one file give each name once"
        );
        assert!(names_for(&["/home/dev/game/a/b.txt"], &t).is_empty());
    }

    #[test]
    fn dotted_file_names_are_not_modules() {
        let t = templates("./?.lua");
        assert!(names_for(&["/home/dev/game/a.b.lua"], &t).is_empty());
    }

    #[test]
    fn any_template_shape() {
        let t = templates("/src/?/lib/?.lua;/src/mod_?.lua;/link/?.lua");
        assert_eq!(names_for(&["/src/x/lib/x.lua"], &t), vec!["x"]);
        assert!(names_for(&["/src/x/lib/y.lua"], &t).is_empty(), "both marks are the same name");
        assert_eq!(names_for(&["/src/mod_net.lua"], &t), vec!["net"]);
        assert_eq!(names_for(&["/real/m.lua"], &t), vec!["m"], "template directory resolved");
    }

    #[test]
    fn templates_without_marks_or_unresolvable_dirs() {
        let t = templates(";;/fixed/file.lua;/nowhere/?.lua");
        assert_eq!(t.len(), 1);
        assert_eq!(names_for(&["/nowhere/q.lua"], &t), vec!["q"], "kept as written");
    }

    #[test]
    fn search_finds_the_first_existing_expansion() {
        let t = templates("./?.lua;./?/init.lua");
        let exists = |p: &str| p == "./pkg/init.lua" || p == "./a/b.lua";
        assert_eq!(search("pkg", &t, exists).as_deref(), Some("./pkg/init.lua"));
        assert_eq!(search("a.b", &t, exists).as_deref(), Some("./a/b.lua"));
        assert_eq!(search("nope", &t, exists), None);
    }
}
