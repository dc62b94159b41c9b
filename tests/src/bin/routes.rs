//! `cargo run -p tests --bin routes`: writes the files generated from the route table and
//! `infra/managed-instances.yaml`, generated from `infra/template.yaml` (see
//! `tests::mirrors`), and names the ones it changed.

fn main() -> std::io::Result<()> {
    let root = tests::mirrors::repo();
    for (path, contents) in tests::mirrors::generated() {
        let full = root.join(&path);
        if std::fs::read_to_string(&full).ok().as_deref() == Some(contents.as_str()) {
            continue;
        }
        if let Some(dir) = full.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&full, contents)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
