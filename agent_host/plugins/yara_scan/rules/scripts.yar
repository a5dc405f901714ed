rule reverse_shell_one_liner
{
    meta:
        description = "A reverse-shell one-liner in a script or text file"
        severity = "high"
        technique = "T1059.004"
    strings:
        $dev_tcp = /(ba)?sh\s+-i\s*[>&]+\s*\/dev\/tcp\/[^\/\s]+\/\d+/
        $nc_e = /\bnc(at)?\s+(-\w+\s+)*-e\s+\/bin\/(ba)?sh\b/
        $python = /socket\.socket\(.{0,200}connect\(.{0,200}(pty\.spawn|os\.dup2)/s
        $mkfifo = /mkfifo\s+\S+;\s*(cat|nc)\s.{0,80}\|\s*\/bin\/(ba)?sh/
    condition:
        filesize < 1MB and any of them
}

rule download_and_execute_script
{
    meta:
        description = "A script that downloads code and pipes it into a shell"
        severity = "medium"
        technique = "T1105"
    strings:
        $curl = /\b(curl|wget)\s[^\n|]{1,200}\|\s*(sudo\s+)?(ba)?sh\b/
    condition:
        filesize < 1MB and $curl
}
