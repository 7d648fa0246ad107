//! The committed stage reference (docs/stages.md) is what the stages declare now.

#[test]
fn the_committed_stage_reference_is_current() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let path = root.join("docs/stages.md");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    let generated = forja::reference::stages_markdown(&forja::registry());
    assert!(
        committed == generated,
        "{} is out of date with the stages' declarations: regenerate it with `target/release/forja stages --markdown > docs/stages.md`",
        path.display()
    );
}
