rule elf_in_world_writable_folder
{
    meta:
        description = "An ELF executable written to /tmp, /var/tmp or /dev/shm"
        severity = "high"
        technique = "T1105"
    condition:
        uint32(0) == 0x464c457f and filepath matches /^\/(tmp|var\/tmp|dev\/shm)\//
}
