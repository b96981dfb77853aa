//! Names the version boundaries compat.rs switches on (`before_pg16`,
//! `before_pg17`, `before_pg18`), derived from the one `pgNN` feature a
//! build enables, so the compatibility module reads as "before 17" rather
//! than as lists of features.

fn main() {
    let major = (14..=18)
        .find(|m| std::env::var_os(format!("CARGO_FEATURE_PG{m}")).is_some())
        .unwrap_or(15);
    for boundary in [16, 17, 18] {
        println!("cargo::rustc-check-cfg=cfg(before_pg{boundary})");
        if major < boundary {
            println!("cargo::rustc-cfg=before_pg{boundary}");
        }
    }
    println!("cargo::rerun-if-changed=build.rs");
}
