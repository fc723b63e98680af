"""Mount option parsing as containerd's mount_linux.go does it."""

from shim.mount import MS_BIND, MS_NODEV, MS_NOSUID, MS_PRIVATE, MS_RDONLY, MS_REC, parse_options


def test_overlay_options_are_data() -> None:
    flags, propagation, data = parse_options(
        ["index=off", "workdir=/w", "upperdir=/u", "lowerdir=/l1:/l2"]
    )
    assert flags == 0 and propagation == 0
    assert data == "index=off,workdir=/w,upperdir=/u,lowerdir=/l1:/l2"


def test_flags_set_and_cleared() -> None:
    flags, propagation, data = parse_options(["rbind", "ro", "nosuid", "nodev", "rprivate"])
    assert flags == MS_BIND | MS_REC | MS_RDONLY | MS_NOSUID | MS_NODEV
    assert propagation == MS_PRIVATE | MS_REC
    assert data == ""
    assert parse_options(["ro", "rw"])[0] == 0
    assert parse_options(["nosuid", "suid"])[0] == 0
