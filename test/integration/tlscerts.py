"""Test certificates made at run time with openssl: a CA and leaves it signs. No private key
is ever committed; each test module makes its own in a temporary directory."""

import subprocess


def run(*args):
    subprocess.run(args, check=True, capture_output=True)


class Certs:
    """A CA and leaf certificates signed by it, in a directory."""

    def __init__(self, d):
        self.d = d
        self.ca = str(d / "ca.crt")
        run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(d / "ca.key"), "-out", self.ca, "-days", "30", "-subj",
            "/CN=gateway test CA")

    def leaf(self, name, sans, days=30):
        key, csr, crt = (str(self.d / ("%s.%s" % (name, x))) for x in ("key", "csr", "crt"))
        ext = self.d / ("%s.ext" % name)
        ext.write_text("subjectAltName=" + ",".join("DNS:" + s for s in sans) + "\n")
        run("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=%s" % sans[0])
        run("openssl", "x509", "-req", "-in", csr, "-CA", self.ca, "-CAkey",
            str(self.d / "ca.key"), "-CAcreateserial", "-out", crt, "-days", str(days),
            "-extfile", str(ext))
        return crt, key
