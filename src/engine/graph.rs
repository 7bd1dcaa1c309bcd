//! Which module required which: recorded as modules load (the `require` wrapper knows the
//! module whose top level is running), so that a change reaches the modules that captured
//! it (`player.lua`'s `local SPEED = require("conf").speed`): `dependents` are the modules
//! that required a module, directly or not, and `order` puts a set of modules in an order
//! where each comes after the modules it required. Pure.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};

type Name = Box<[u8]>;

/// The require graph of one Lua state.
#[derive(Debug, Default)]
pub(crate) struct Graph {
    /// module -> the modules whose top level required it
    requirers: HashMap<Name, Vec<Name>>,
    /// module -> the modules its top level required
    requires: HashMap<Name, Vec<Name>>,
}

impl Graph {
    /// Records that the top level of `parent` required `child`.
    pub(crate) fn record(&mut self, parent: &[u8], child: &[u8]) {
        if parent == child {
            return;
        }
        let parents = self.requirers.entry(child.into()).or_default();
        if !parents.iter().any(|p| **p == *parent) {
            parents.push(parent.into());
        }
        let children = self.requires.entry(parent.into()).or_default();
        if !children.iter().any(|c| **c == *child) {
            children.push(child.into());
        }
    }

    /// Forgets what `parent`'s top level required: it is running again, and records anew.
    /// Returns what it had required, for `restore` if that run fails.
    pub(crate) fn top_level_runs(&mut self, parent: &[u8]) -> Vec<Name> {
        let children = self.requires.remove(parent).unwrap_or_default();
        for child in &children {
            if let Some(parents) = self.requirers.get_mut(child) {
                parents.retain(|p| **p != *parent);
                if parents.is_empty() {
                    self.requirers.remove(child);
                }
            }
        }
        children
    }

    /// `parent`'s new top level failed: the running version is the one that required
    /// `children`, whatever the failed run recorded.
    pub(crate) fn restore(&mut self, parent: &[u8], children: &[Name]) {
        self.top_level_runs(parent);
        for child in children {
            self.record(parent, child);
        }
    }

    /// The modules that required `name`, directly or through others, nearest first (those at
    /// the same distance by name); without `name` itself, whatever the cycles.
    pub(crate) fn dependents(&self, name: &[u8]) -> Vec<Name> {
        let mut seen: HashSet<&[u8]> = HashSet::from([name]);
        let mut out: Vec<Name> = Vec::new();
        let mut level: Vec<&[u8]> = vec![name];
        while !level.is_empty() {
            let mut next: Vec<&[u8]> = Vec::new();
            for m in level {
                for p in self.requirers.get(m).into_iter().flatten() {
                    if seen.insert(p) {
                        next.push(p);
                    }
                }
            }
            next.sort_unstable();
            out.extend(next.iter().map(|&p| p.into()));
            level = next;
        }
        out
    }

    /// `names` in an order where each module comes after the modules of `names` it required
    /// (directly or through modules outside `names`). Modules in a cycle come together, in
    /// their order in `names`, after what the whole cycle required; otherwise, of the modules
    /// that could come next, the first in `names` does. Linear in the edges met.
    pub(crate) fn order(&self, names: &[Name]) -> Vec<Name> {
        let n = names.len();
        let index: HashMap<&[u8], usize> =
            names.iter().enumerate().map(|(i, m)| (&**m, i)).collect();
        // before[i]: the modules that must come after i (they required it)
        let before: Vec<Vec<usize>> = names.iter().map(|m| self.requirers_in(m, &index)).collect();
        let (component, count) = components(&before);
        // the cycles as single nodes, and the order between them
        let mut members: Vec<Vec<usize>> = vec![Vec::new(); count];
        for (i, &c) in component.iter().enumerate() {
            members[c].push(i);
        }
        let mut after: Vec<Vec<usize>> = vec![Vec::new(); count];
        let mut blockers = vec![0usize; count];
        for (i, later) in before.iter().enumerate() {
            for &j in later {
                let (ci, cj) = (component[i], component[j]);
                if ci != cj && !after[ci].contains(&cj) {
                    after[ci].push(cj);
                    blockers[cj] += 1;
                }
            }
        }
        // ready components by their first member's place in `names`
        let first = |c: usize| members[c].first().copied().unwrap_or(usize::MAX);
        let mut ready: BinaryHeap<Reverse<(usize, usize)>> =
            (0..count).filter(|&c| blockers[c] == 0).map(|c| Reverse((first(c), c))).collect();
        let mut out = Vec::with_capacity(n);
        while let Some(Reverse((_, c))) = ready.pop() {
            out.extend(members[c].iter().map(|&i| names[i].clone()));
            for &d in &after[c] {
                blockers[d] -= 1;
                if blockers[d] == 0 {
                    ready.push(Reverse((first(d), d)));
                }
            }
        }
        out
    }

    /// The reloads that changes to `roots` call for, with their dependents: each root with
    /// the modules that required it (those `keep` accepts), chains that share a module
    /// merged into one, each in `order`. Every module is in one chain only.
    pub(crate) fn chains(&self, roots: &[Name], keep: impl Fn(&[u8]) -> bool) -> Vec<Vec<Name>> {
        let mut groups: Vec<Vec<Name>> = Vec::new();
        for root in roots {
            let mut chain = vec![root.clone()];
            chain.extend(self.dependents(root).into_iter().filter(|d| keep(d)));
            let (mut merged, rest): (Vec<Vec<Name>>, Vec<Vec<Name>>) =
                groups.into_iter().partition(|g| g.iter().any(|m| chain.contains(m)));
            let mut group: Vec<Name> = merged.drain(..).flatten().collect();
            for m in chain {
                if !group.contains(&m) {
                    group.push(m);
                }
            }
            groups = rest;
            groups.push(group);
        }
        groups.iter().map(|g| self.order(g)).collect()
    }

    /// The modules of the set (by index) that required `name`, directly or through modules
    /// outside the set.
    fn requirers_in(&self, name: &[u8], index: &HashMap<&[u8], usize>) -> Vec<usize> {
        let mut found = Vec::new();
        let mut seen: HashSet<&[u8]> = HashSet::from([name]);
        let mut stack: Vec<&[u8]> = vec![name];
        while let Some(m) = stack.pop() {
            for p in self.requirers.get(m).into_iter().flatten() {
                if !seen.insert(p) {
                    continue;
                }
                match index.get(&**p) {
                    Some(&j) => found.push(j),
                    None => stack.push(p),
                }
            }
        }
        found
    }
}

/// The strongly connected components of the graph `edges` (node -> successors): each
/// node's component, and how many there are (Kosaraju's algorithm, without recursion).
fn components(edges: &[Vec<usize>]) -> (Vec<usize>, usize) {
    let n = edges.len();
    let mut reverse: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, succ) in edges.iter().enumerate() {
        for &j in succ {
            reverse[j].push(i);
        }
    }
    // nodes by the time their depth-first search finished
    let mut finished = Vec::with_capacity(n);
    let mut seen = vec![false; n];
    for start in 0..n {
        if seen[start] {
            continue;
        }
        seen[start] = true;
        let mut stack = vec![(start, 0usize)];
        while let Some((node, next)) = stack.pop() {
            match edges[node].get(next) {
                Some(&succ) => {
                    stack.push((node, next + 1));
                    if !seen[succ] {
                        seen[succ] = true;
                        stack.push((succ, 0));
                    }
                }
                None => finished.push(node),
            }
        }
    }
    let mut component = vec![usize::MAX; n];
    let mut count = 0;
    for &start in finished.iter().rev() {
        if component[start] != usize::MAX {
            continue;
        }
        component[start] = count;
        let mut stack = vec![start];
        while let Some(node) = stack.pop() {
            for &pred in &reverse[node] {
                if component[pred] == usize::MAX {
                    component[pred] = count;
                    stack.push(pred);
                }
            }
        }
        count += 1;
    }
    (component, count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[Name]) -> Vec<&str> {
        v.iter().map(|n| std::str::from_utf8(n).unwrap()).collect()
    }

    fn boxed(v: &[&str]) -> Vec<Name> {
        v.iter().map(|s| s.as_bytes().into()).collect()
    }

    /// main requires game and conf; game requires player; player requires conf.
    fn game() -> Graph {
        let mut g = Graph::default();
        for (p, c) in [("main", "game"), ("main", "conf"), ("game", "player"), ("player", "conf")] {
            g.record(p.as_bytes(), c.as_bytes());
        }
        g
    }

    #[test]
    fn dependents_nearest_first() {
        let g = game();
        assert_eq!(names(&g.dependents(b"conf")), ["main", "player", "game"]);
        assert_eq!(names(&g.dependents(b"player")), ["game", "main"]);
        assert!(g.dependents(b"main").is_empty(), "nobody required main");
        assert!(g.dependents(b"unknown").is_empty());
    }

    #[test]
    fn order_puts_what_was_required_first() {
        let g = game();
        let all = boxed(&["main", "player", "game", "conf"]);
        assert_eq!(names(&g.order(&all)), ["conf", "player", "game", "main"]);
        // through a module outside the set: main required conf via player and game too
        assert_eq!(names(&g.order(&boxed(&["main", "conf"]))), ["conf", "main"]);
    }

    #[test]
    fn a_diamond_reloads_each_module_once_in_order() {
        let mut g = Graph::default();
        for (p, c) in [("a", "c"), ("b", "c"), ("d", "a"), ("d", "b")] {
            g.record(p.as_bytes(), c.as_bytes());
        }
        let mut chain = vec![Name::from(&b"c"[..])];
        chain.extend(g.dependents(b"c"));
        assert_eq!(names(&chain), ["c", "a", "b", "d"]);
        assert_eq!(names(&g.order(&chain)), ["c", "a", "b", "d"]);
    }

    #[test]
    fn cycles_terminate_and_keep_every_module() {
        let mut g = Graph::default();
        for (p, c) in [("a", "b"), ("b", "a"), ("c", "a")] {
            g.record(p.as_bytes(), c.as_bytes());
        }
        assert_eq!(names(&g.dependents(b"a")), ["b", "c"]);
        let order = g.order(&boxed(&["c", "a", "b"]));
        assert_eq!(order.len(), 3);
        let pos = |n: &str| order.iter().position(|m| **m == *n.as_bytes()).unwrap();
        assert!(pos("a") < pos("c") && pos("b") < pos("c"), "{:?}", names(&order));
    }

    #[test]
    fn chains_merge_when_they_share_a_module() {
        let g = game();
        let chains = g.chains(&boxed(&["conf", "player"]), |_| true);
        assert_eq!(chains.len(), 1, "player is in conf's chain");
        assert_eq!(names(&chains[0]), ["conf", "player", "game", "main"]);
        let chains = g.chains(&boxed(&["conf"]), |m| m != b"main");
        assert_eq!(names(&chains[0]), ["conf", "player", "game"], "main is not loaded");
        let mut g = game();
        g.record(b"other", b"lib");
        let chains = g.chains(&boxed(&["lib", "conf"]), |_| true);
        assert_eq!(chains.len(), 2, "independent chains stay apart");
        assert_eq!(names(&chains[0]), ["lib", "other"]);
    }

    #[test]
    fn a_thousand_dependents_order_quickly() {
        let mut g = Graph::default();
        let mut all = vec![Name::from(&b"core"[..])];
        for i in 0..1000 {
            let m = format!("m{i}");
            g.record(m.as_bytes(), b"core");
            if i > 0 {
                g.record(m.as_bytes(), format!("m{}", i - 1).as_bytes());
            }
            all.push(m.as_bytes().into());
        }
        all.reverse();
        let order = g.order(&all);
        assert_eq!(order.len(), 1001);
        assert_eq!(&*order[0], b"core");
        assert_eq!(&*order[1000], b"m999");
    }

    #[test]
    fn a_top_level_that_runs_again_records_anew() {
        let mut g = game();
        let before = g.top_level_runs(b"player");
        assert_eq!(names(&g.dependents(b"conf")), ["main"], "player no longer requires conf");
        g.record(b"player", b"other");
        g.restore(b"player", &before);
        assert_eq!(names(&g.dependents(b"conf")), ["main", "player", "game"], "restored");
        assert!(g.dependents(b"other").is_empty(), "the failed run's edges are gone");
        g.top_level_runs(b"player");
        g.record(b"player", b"conf");
        assert_eq!(names(&g.dependents(b"conf")), ["main", "player", "game"]);
        g.record(b"x", b"x");
        assert!(g.dependents(b"x").is_empty(), "a module does not require itself");
    }
}
