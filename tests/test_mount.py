"""Mount option parsing as containerd's mount_linux.go does it."""

from shim.mount import MS_BIND, MS_NODEV, MS_NOSUID, MS_PRIVATE, MS_RDONLY, MS_REC, parse_options


def test_overlay_options_are_data() -> None:
    opts = parse_options(["index=off", "workdir=/w", "upperdir=/u", "lowerdir=/l1:/l2"])
    assert opts.flags == 0 and opts.propagation == 0
    assert opts.data == "index=off,workdir=/w,upperdir=/u,lowerdir=/l1:/l2"


def test_flags_set_and_cleared() -> None:
    opts = parse_options(["rbind", "ro", "nosuid", "nodev", "rprivate"])
    assert opts.flags == MS_BIND | MS_REC | MS_RDONLY | MS_NOSUID | MS_NODEV
    assert opts.propagation == MS_PRIVATE | MS_REC
    assert parse_options(["ro", "rw"]).flags == 0
    assert parse_options(["nosuid", "suid"]).flags == 0
