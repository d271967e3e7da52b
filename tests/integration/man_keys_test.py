#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""The man pages iotgw.toml(5) and iotgw-device(5) document what the real parser takes.

Usage: man_keys_test.py IOTGWD SOURCE_DIR

Each page documents its keys as `.TP` items under a `.SS` heading that names the TOML table(s)
they belong to ("[upstream]", "[[coap.rule]]", "[mqtt.payload.fields.\\fIname\\fP]", where the
italic word stands for any name), with the key first in the item's tag (`.BI "port = " integer`).
Its EXAMPLES hold complete TOML documents, each an `.EX`/`.EE` block right after a
`.\\" toml-example` line. This test proves, against the iotgwd binary:

1. Every example is accepted by `iotgwd --check-config`: each configuration example of
   iotgw.toml(5) as the main configuration file, with the device examples of iotgw-device(5) in its
   devices.d/ (exit 0, "OK, N device policies"). /etc/iotgw and /var/lib/iotgw in the examples are
   moved into a temporary directory (a configuration example without [daemon] gets one naming
   them), and every file the configuration names (certificates, keys, CRLs, the password file) is
   made there first, with openssl.
2. Coverage both ways: every documented key appears in the examples, in every table its heading
   names, and every key the examples use is documented.
3. The check is real: each documented key, misspelt (`_x` appended) in the example that has it, is
   refused with exit 1 and "unknown key '..._x'".
"""
import fnmatch
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib

IOTGWD = sys.argv[1] if len(sys.argv) > 1 else ""
FILE_KEYS = {"certificate", "private_key", "ca_file", "crl_file", "password_file"}
ROFF = [(r"\-", "-"), (r"\e", "\\"), (r"\(dq", '"'), (r"\(aq", "'"), (r"\&", "")]

failures = []


def check(cond, what):
    print(f"  [{'ok  ' if cond else 'FAIL'}] {what}", flush=True)
    if not cond:
        failures.append(what)


def unroff(text):
    for escape, char in ROFF:
        text = text.replace(escape, char)
    if "\\" in text:
        raise SystemExit(f"an example holds a roff escape this test does not know: {text!r}")
    return text


def parse_page(path):
    """Returns ([(table patterns, key)], [example text]) as the page documents them."""
    lines = open(path, encoding="utf-8").read().splitlines()
    keys, examples, tables, i = [], [], None, 0
    while i < len(lines):
        line = lines[i]
        if line.startswith(".SH"):
            tables = None
        elif line.startswith(".SS"):
            heading = re.sub(r"\\fI[^\\]*\\f[PR]", "*", line)
            tables = re.findall(r"\[\[?([A-Za-z0-9_.*]+)\]\]?", heading) or None
        elif line == ".TP" and tables:
            m = re.match(r'\.B[IR]?\s+"?([a-z_][a-z0-9_]*) = ', lines[i + 1])
            if not m:
                raise SystemExit(f"{path}:{i + 2}: a .TP item under {tables} names no key")
            keys.append((tuple(tables), m.group(1)))
        elif line == r'.\" toml-example':
            if lines[i + 1] != ".EX":
                raise SystemExit(f"{path}:{i + 1}: toml-example is not followed by .EX")
            end = lines.index(".EE", i)
            examples.append(unroff("\n".join(lines[i + 2:end]) + "\n"))
            i = end
        i += 1
    return keys, examples


def used_keys(doc, path=""):
    """(table path, key) of every value that is not a table, arrays of tables without index."""
    for k, v in doc.items():
        sub = f"{path}.{k}" if path else k
        if isinstance(v, dict):
            yield from used_keys(v, sub)
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            for x in v:
                yield from used_keys(x, sub)
        else:
            yield path, k


def misspell(text, pattern, key):
    """The document with the first `key =` in a table matching `pattern` renamed to key_x."""
    table, out = "", text.splitlines()
    for n, line in enumerate(out):
        header = re.match(r"\s*\[\[?\s*([^\]\s]+)\s*\]\]?\s*(#.*)?$", line)
        if header:
            table = header.group(1)
        elif fnmatch.fnmatchcase(table, pattern) and re.match(rf"\s*{key}\s*=", line):
            out[n] = line.replace(key, key + "_x", 1)
            return "\n".join(out) + "\n"
    return None


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False, **kw)


class Tree:
    """A temporary /etc/iotgw and /var/lib/iotgw for one configuration example."""

    def __init__(self, base, text, pki):
        self.etc = os.path.join(base, "etc")
        self.state = os.path.join(base, "state")
        os.makedirs(os.path.join(self.etc, "devices.d"))
        if "daemon" not in tomllib.loads(text):
            text = ('[daemon]\nstate_directory = "/var/lib/iotgw"\n'
                    'devices_directory = "/etc/iotgw/devices.d"\n\n' + text)
        self.config = os.path.join(self.etc, "iotgw.toml")
        self.source = text  # as the page has it, [daemon] added
        doc = tomllib.loads(self.relocate(text))
        for table, key in used_keys(doc):
            if key not in FILE_KEYS:
                continue
            value = doc
            for part in table.split("."):
                value = value[part]
            path = os.path.join(self.etc, value[key])  # an absolute path stays as it is
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if key == "password_file":
                with open(path, "w", encoding="utf-8") as f:
                    f.write("*:example-password\n")
            else:
                made = {"private_key": "ca.key", "crl_file": "crl.pem"}.get(key, "ca.crt")
                shutil.copyfile(os.path.join(pki, made), path)
            os.chmod(path, 0o600)

    def relocate(self, text):
        return text.replace("/etc/iotgw", self.etc).replace("/var/lib/iotgw", self.state)

    def check_config(self, text, devices):
        """Writes the configuration (or the example) and devices.d/, runs --check-config."""
        with open(self.config, "w", encoding="utf-8") as f:
            f.write(self.relocate(text if text is not None else self.source))
        ddir = os.path.join(self.etc, "devices.d")
        shutil.rmtree(ddir)
        os.makedirs(ddir)
        for name, doc in devices.items():
            with open(os.path.join(ddir, name), "w", encoding="utf-8") as f:
                f.write(doc)
        env = {k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"}
        return run([IOTGWD, "--check-config", "--config", self.config], env=env)


def make_pki(pki):
    """A CA certificate, its key and an empty CRL, made by openssl now."""
    os.makedirs(pki)
    req = run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
               "-nodes", "-keyout", f"{pki}/ca.key", "-out", f"{pki}/ca.crt", "-days", "2",
               "-subj", "/CN=man-keys-test CA"])
    cnf = (f"[ca]\ndefault_ca = test_ca\n[test_ca]\ndatabase = {pki}/index.txt\n"
           f"crlnumber = {pki}/crlnumber\ndefault_md = sha256\ndefault_crl_days = 2\n")
    for name, text in (("index.txt", ""), ("crlnumber", "01\n"), ("ca.cnf", cnf)):
        with open(f"{pki}/{name}", "w", encoding="utf-8") as f:
            f.write(text)
    crl = run(["openssl", "ca", "-gencrl", "-config", f"{pki}/ca.cnf", "-keyfile", f"{pki}/ca.key",
               "-cert", f"{pki}/ca.crt", "-out", f"{pki}/crl.pem"])
    if req.returncode != 0 or crl.returncode != 0:
        raise SystemExit(f"openssl failed: {req.stderr}{crl.stderr}")


def coverage(page, keys, examples):
    used = {u for doc in examples for u in used_keys(tomllib.loads(doc))}
    missing = [f"[{p}] {key}" for tables, key in keys for p in tables
               if not any(k == key and fnmatch.fnmatchcase(t, p) for t, k in used)]
    undocumented = [f"[{t}] {key}" for t, key in sorted(used)
                    if not any(k == key and any(fnmatch.fnmatchcase(t, p) for p in tables)
                               for tables, k in keys)]
    check(not missing, f"{page}: all {sum(len(t) for t, _ in keys)} documented keys (per table) "
          "are in the examples"
          + (f"; missing: {', '.join(missing)}" if missing else ""))
    check(not undocumented, f"{page}: all {len(used)} (table, key) the examples use are documented"
          + (f"; undocumented: {', '.join(undocumented)}" if undocumented else ""))


def misspellings(page, keys, examples, attempt):
    """Each documented key, misspelt in the first example that has it, must be refused."""
    by_table = {}
    for tables, key in keys:
        for pattern in tables:
            by_table.setdefault(pattern, []).append(key)
    for pattern, names in by_table.items():
        refused = []
        for key in names:
            found = [(n, t) for n, doc in enumerate(examples)
                     if (t := misspell(doc, pattern, key)) is not None]
            if not found:
                check(False, f"{page}: [{pattern}] {key}: no example line to misspell")
                continue
            n, text = found[0]
            r = attempt(n, text)
            if r.returncode == 1 and re.search(rf"unknown key '[^']*\b{key}_x'", r.stderr):
                refused.append(key)
            else:
                check(False, f"{page}: [{pattern}] {key}_x: exit {r.returncode} {r.stderr!r}")
        check(len(refused) == len(names),
              f"{page}: [{pattern}] {len(refused)}/{len(names)} misspelt keys refused: "
              + " ".join(refused))


def main():
    if len(sys.argv) != 3 or not os.access(IOTGWD, os.X_OK):
        raise SystemExit("usage: man_keys_test.py IOTGWD SOURCE_DIR")
    man = os.path.join(sys.argv[2], "packaging", "man")
    conf_keys, confs = parse_page(os.path.join(man, "iotgw.toml.5"))
    dev_keys, devs = parse_page(os.path.join(man, "iotgw-device.5"))
    print(f"iotgw.toml.5: {len(conf_keys)} key items, {len(confs)} examples; "
          f"iotgw-device.5: {len(dev_keys)} key items, {len(devs)} examples")
    if not (conf_keys and confs and dev_keys and devs):
        raise SystemExit("FAIL: a page has no documented keys or no marked examples")
    devices = {f"{tomllib.loads(d)['device']['id']}.toml": d for d in devs}

    root = tempfile.mkdtemp(prefix="iotgw-man-keys-")
    try:
        make_pki(os.path.join(root, "pki"))
        trees = [Tree(os.path.join(root, f"config-{n}"), text, os.path.join(root, "pki"))
                 for n, text in enumerate(confs)]
        print("The examples, checked by iotgwd --check-config:")
        for n, tree in enumerate(trees):
            r = tree.check_config(None, devices)
            expected = f"{tree.config}: OK, {len(devices)} device policies"
            check(r.returncode == 0 and r.stdout.strip() == expected,
                  f"iotgw.toml.5 example {n + 1} with {', '.join(sorted(devices))}: exit "
                  f"{r.returncode} {(r.stdout + r.stderr).strip()!r}")

        print("Coverage, both ways:")
        coverage("iotgw.toml.5", conf_keys, confs)
        coverage("iotgw-device.5", dev_keys, devs)

        print("Each documented key misspelt (key_x) is refused:")
        if failures:  # the misspelt key must be the one thing wrong
            raise SystemExit(f"FAIL: {len(failures)} check(s) failed; misspellings not tried")
        misspellings("iotgw.toml.5", conf_keys, [t.source for t in trees],
                     lambda n, text: trees[n].check_config(text, devices))
        names = list(devices)  # in the order of devs
        misspellings("iotgw-device.5", dev_keys, devs,
                     lambda n, text: trees[0].check_config(None, {**devices, names[n]: text}))
    finally:
        shutil.rmtree(root, ignore_errors=True)

    if failures:
        print(f"FAIL: {len(failures)} check(s) failed")
        sys.exit(1)
    print("PASS: every documented key is accepted by iotgwd, and every misspelling refused")


if __name__ == "__main__":
    main()
