//! Is there a Hyper-V PTP clock? Either the configured device exists under
//! the root (on a guest it is a udev link, `/dev/ptp_hyperv -> ptp0`), or a
//! PTP clock in `<root>/sys/class/ptp/ptp*/clock_name` says `hyperv`. Both
//! are looked up under the root so tests can build a fake tree.

use std::path::Path;

use serde::Serialize;

use bs_core::Root;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Detection {
    /// The configured device, as a system path.
    pub target: String,
    /// The device path exists under the root (a link counts, even dangling
    /// in a sandbox: it is what udev makes).
    pub device_present: bool,
    /// The PTP clocks whose `clock_name` is `hyperv` (`ptp0`, ...).
    pub hyperv_clocks: Vec<String>,
    pub found: bool,
}

pub fn detect(root: &Root, device: &Path) -> Detection {
    let device_present = std::fs::symlink_metadata(root.join(device)).is_ok();
    let mut hyperv_clocks = Vec::new();
    // /sys is the kernel's: following its links is what they are for.
    if let Ok(entries) = std::fs::read_dir(root.join("/sys/class/ptp")) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with("ptp") {
                continue;
            }
            let clock =
                std::fs::read_to_string(entry.path().join("clock_name")).unwrap_or_default();
            if clock.trim() == "hyperv" {
                hyperv_clocks.push(name);
            }
        }
    }
    hyperv_clocks.sort();
    Detection {
        target: device.display().to_string(),
        found: device_present || !hyperv_clocks.is_empty(),
        device_present,
        hyperv_clocks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> (tempfile::TempDir, Root) {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path()).unwrap();
        (dir, root)
    }

    fn clock(root: &Root, ptp: &str, name: &str) {
        let dir = root.join(format!("/sys/class/ptp/{ptp}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("clock_name"), format!("{name}\n")).unwrap();
    }

    #[test]
    fn nothing_there_means_not_found() {
        let (_d, root) = root();
        let det = detect(&root, Path::new("/dev/ptp_hyperv"));
        assert!(!det.found);
        assert!(!det.device_present);
    }

    #[test]
    fn a_dangling_udev_link_counts_as_the_device() {
        let (_d, root) = root();
        std::fs::create_dir_all(root.join("/dev")).unwrap();
        std::os::unix::fs::symlink("ptp0", root.join("/dev/ptp_hyperv")).unwrap();
        let det = detect(&root, Path::new("/dev/ptp_hyperv"));
        assert!(det.found && det.device_present);
    }

    #[test]
    fn a_hyperv_clock_in_sysfs_is_found_and_others_are_not() {
        let (_d, root) = root();
        clock(&root, "ptp0", "KVM virtual PTP");
        assert!(!detect(&root, Path::new("/dev/ptp_hyperv")).found);
        clock(&root, "ptp1", "hyperv");
        let det = detect(&root, Path::new("/dev/ptp_hyperv"));
        assert!(det.found);
        assert!(!det.device_present);
        assert_eq!(det.hyperv_clocks, vec!["ptp1"]);
    }
}
