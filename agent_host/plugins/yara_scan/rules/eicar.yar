rule eicar_test_file
{
    meta:
        description = "The EICAR anti-virus test file"
        severity = "medium"
        technique = "T1204"
    strings:
        $eicar = "X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
    condition:
        $eicar at 0 and filesize < 256
}
