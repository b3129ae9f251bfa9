#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: the bs developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: facts
short_description: Gather the state of a research backend server from the bs tools
version_added: "0.1.0"
description:
  - Runs the read-only verb of each bs tool (C(list) or C(status); C(ls) for the job queue)
    on the host and returns their records as the fact C(bs).
  - Nothing on the host changes; the tools take no lock for these verbs.
  - The module never reads C(/etc/bs/secrets.env). Values under secret-looking keys, and the
    values of a job's environment, are masked before they reach Ansible; still run the task
    with C(no_log) when its result is printed, since job and user records name people.
author:
  - The bs developers (@opensafely-core)
options:
  backend:
    description:
      - The backend this host is, the name of a directory under C(backends/) of O(repo).
    type: str
    required: true
  repo:
    description:
      - The bs checkout on the host.
    type: path
    required: true
  root:
    description:
      - The root the tools look at (C(BS_ROOT)).
    type: path
    default: /
  gather:
    description:
      - The tools to ask, each with its read-only verb (C(bs-users list), C(bs-perms list),
        C(bs-docker status), C(bs-chrony status), C(bs-jobs ls)).
    type: list
    elements: str
    choices: [bs-users, bs-perms, bs-docker, bs-chrony, bs-jobs]
    default: [bs-users, bs-perms, bs-docker, bs-chrony, bs-jobs]
  timeout:
    description:
      - Seconds each tool may take.
    type: int
    default: 300
attributes:
  check_mode:
    support: full
    description: The verbs are read-only; they run in check mode too.
  diff_mode:
    support: none
    description: Nothing changes, so there is no diff.
  facts:
    support: full
    description: Sets the fact C(bs).
  platform:
    support: full
    platforms: posix
    description: Debian hosts with the bs tools installed.
requirements:
  - The bs release binaries on the host's PATH.
seealso:
  - module: opensafely.bs.converge
"""

EXAMPLES = r"""
- name: What bs knows about this host
  opensafely.bs.facts:
    backend: tpp
    repo: /srv/bs
  no_log: true

- name: Who has an account, and in which groups
  ansible.builtin.debug:
    msg: "{{ ansible_facts.bs.tools['bs-users'].records | selectattr('type', 'eq', 'user') | map(attribute='name') }}"
"""

RETURN = r"""
ansible_facts:
  description: The fact C(bs).
  returned: always
  type: dict
  contains:
    bs:
      description: C(backend), and per tool in C(tools) its C(verb), C(exit), C(ok), C(summary) and C(records).
      type: dict
      returned: always
      sample:
        backend: tpp
        tools:
          bs-chrony:
            verb: status
            exit: 0
            ok: true
            summary: {tool: bs-chrony, type: summary, ok: true}
            records: [{tool: bs-chrony, type: clock, synchronised: true}]
failed_tools:
  description: Tools that exited non-zero or printed no summary.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.opensafely.bs.plugins.module_utils import records as bsrec

# The read-only verb of each tool (docs/bs-*.md).
READ_VERB = {
    "bs-users": ["list"],
    "bs-perms": ["list"],
    "bs-docker": ["status"],
    "bs-chrony": ["status"],
    "bs-jobs": ["ls"],
}


def gather(module, tool):
    params = module.params
    binary = module.get_bin_path(tool, required=False, opt_dirs=["/usr/local/bin"])
    if binary is None:
        return {"verb": READ_VERB[tool][0], "exit": None, "ok": False, "summary": None,
                "records": [], "message": "%s is not installed" % tool}
    argv = ["timeout", "--kill-after=10", str(params["timeout"]), binary] + READ_VERB[tool]
    env = {"BS_ROOT": params["root"], "BS_REPO": params["repo"], "BS_BACKEND": params["backend"]}
    rc, out, err = module.run_command(argv, cwd=params["repo"], environ_update=env)
    parsed, bad = bsrec.parse_json_lines(out)
    summary = None
    records = []
    for record in parsed:
        if record.get("type") == "summary":
            summary = record
        else:
            records.append(record)
    entry = {
        "verb": READ_VERB[tool][0],
        "exit": rc,
        "ok": rc == bsrec.EXIT_OK and summary is not None and summary.get("ok") is not False
        and not bad,
        "summary": summary,
        "records": records,
    }
    if not entry["ok"]:
        entry["message"] = (err.strip().splitlines() or ["exit %s" % rc])[-1]
    if bad:
        entry["bad_lines"] = bad
    return entry


def main():
    module = AnsibleModule(
        argument_spec=dict(
            backend=dict(type="str", required=True),
            repo=dict(type="path", required=True),
            root=dict(type="path", default="/"),
            gather=dict(type="list", elements="str", choices=list(READ_VERB),
                        default=list(READ_VERB)),
            timeout=dict(type="int", default=300),
        ),
        supports_check_mode=True,
    )
    if not bsrec.BACKEND_NAME.match(module.params["backend"]):
        module.fail_json(msg="backend %r is not a backend name" % module.params["backend"])
    tools = {}
    for tool in module.params["gather"]:
        tools[tool] = gather(module, tool)
    failed_tools = [t for t in module.params["gather"] if not tools[t]["ok"]]
    for tool in failed_tools:
        module.warn("%s %s: %s" % (tool, tools[tool]["verb"], tools[tool].get("message", "")))
    facts = {"bs": {"backend": module.params["backend"], "tools": tools}}
    module.exit_json(changed=False, failed_tools=failed_tools, ansible_facts=facts)


if __name__ == "__main__":
    main()
