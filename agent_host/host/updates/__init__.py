"""What content runs, and how a new version of it comes to run: measured (``content``), signed
(``signing``), attested (``attestation``), validated before activation (``validation``), run in
shadow beside the current version (``shadow``) and promoted or rolled back (``rollout``)."""
