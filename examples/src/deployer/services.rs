//! `deployer --flavour X --list-services`: every service and unikernel a
//! flavour deploys, as Markdown (ocurrent-deployer keeps this list in
//! `doc/services.md` by hand; here it comes from the table itself, so it
//! includes build-only images, scheduled pulls and unikernels too).

use std::fmt::Write;

use super::spec::Flavour;

/// The services list as Markdown.
pub fn markdown(f: &Flavour) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Services deployed by the {} deployer ({})\n", f.name, f.base_url);
    let _ = writeln!(out, "| repository | branch | image | service | host | address |");
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for r in &f.repos {
        for d in &r.images {
            for x in &d.deployments {
                if x.services.is_empty() {
                    let _ = writeln!(
                        out,
                        "| {} | `{}` | `{}` | (build and push only) | | |",
                        r.full_name(),
                        x.branch,
                        x.target
                    );
                }
                for s in &x.services {
                    let uri = s.uri.as_deref().unwrap_or("");
                    let _ = writeln!(
                        out,
                        "| {} | `{}` | `{}` | `{}` | {} | {uri} |",
                        r.full_name(),
                        x.branch,
                        x.target,
                        s.name,
                        s.host
                    );
                }
            }
        }
    }
    for p in &f.pulls {
        let uri = p.service.uri.as_deref().unwrap_or("");
        let days = p.every.as_secs() / 86_400;
        let _ = writeln!(
            out,
            "| (pulled every {days} days) | | `{}` | `{}` | {} | {uri} |",
            p.tag, p.service.name, p.service.host
        );
    }
    let unikernels: Vec<_> = f.repos.iter().flat_map(|r| r.unikernels.iter().map(move |u| (r, u))).collect();
    if !unikernels.is_empty() {
        let _ = writeln!(out, "\n## Unikernels ({})\n", f.albatross.as_deref().unwrap_or("no albatross endpoint"));
        let _ = writeln!(out, "| repository | branch | target | unikernel |");
        let _ = writeln!(out, "|---|---|---|---|");
        for (r, u) in unikernels {
            if u.deployments.is_empty() {
                let _ = writeln!(out, "| {} | | {} | (build only) |", r.full_name(), u.target);
            }
            for (branch, name) in &u.deployments {
                let _ = writeln!(out, "| {} | `{branch}` | {} | `{name}` |", r.full_name(), u.target);
            }
        }
    }
    if !f.ssh_jobs.is_empty() {
        let _ = writeln!(out, "\n## Scheduled SSH jobs\n");
        for j in &f.ssh_jobs {
            let days = j.every.as_secs() / 86_400;
            let _ = writeln!(out, "- `{}` on {} every {days} days (`{}`)", j.key, j.host, j.command.join(" "));
        }
    }
    out
}
