//! Fails (exit 1) when a crate of the workspace has a module cycle; prints each crate's
//! module and import counts otherwise. Run by `tests/run-all`; the rule is in
//! `outpost_tests::modgraph`.

use std::path::PathBuf;
use std::process::ExitCode;

use outpost_tests::modgraph::{workspace_roots, ModuleGraph};

fn main() -> ExitCode {
    let workspace = std::env::args_os().nth(1).map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".."),
        PathBuf::from,
    );
    let roots = match workspace_roots(&workspace) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("module-graph: {}: {e}", workspace.display());
            return ExitCode::FAILURE;
        }
    };
    let mut bad = 0;
    for root in roots {
        let shown = root
            .strip_prefix(&workspace)
            .unwrap_or(&root)
            .display()
            .to_string();
        let graph = match ModuleGraph::read(&root) {
            Ok(g) => g,
            Err(e) => {
                eprintln!("module-graph: {shown}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let imports: usize = graph.imports.values().map(|s| s.len()).sum();
        let cycles = graph.cycles();
        println!(
            "{shown}: {} modules, {imports} imports, {} cycles",
            graph.modules.len(),
            cycles.len()
        );
        for (m, uses) in &graph.globs {
            bad += 1;
            eprintln!(
                "  crate::{}: glob import {} hides what it depends on; name the items",
                m.join("::"),
                uses.join(", ")
            );
        }
        for c in cycles {
            bad += 1;
            eprintln!("  cycle among the children of {}:", c.parent);
            for (m, witness) in c.members {
                eprintln!("    {m}  ({witness})");
            }
        }
    }
    if bad > 0 {
        eprintln!(
            "module-graph: {bad} problem(s): lower layers must not import higher ones, and \
             imports of the crate's own modules name what they take"
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
