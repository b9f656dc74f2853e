"""The node:test reporter the worker hands Node's test runner.

Node's own ``--test-reporter=junit`` (Node 20) names no file: every case has ``classname="test"``,
so two files' ``adds`` tests collide and no id says where a test lives (the ``test`` rule and the
"new or changed test" evidence go by file). This reporter writes the same JUnit shape from the
runner's events, which carry the file: ``classname`` is the file relative to the working directory
and ``name`` the test's suites and its own name joined by `` > `` (Vitest's shape), and a file
that fails to load is a case named for the file. It is written to the job's scratch directory for
each run and never committed.
"""

from __future__ import annotations

REPORTER_FILE = "codeworker_node_reporter.mjs"
"""Its file name in scratch (ESM: Node loads custom reporters as modules)."""

REPORTER_SOURCE = r"""// JUnit XML with each test's file (written by codeworker, never committed).
import { relative } from 'node:path';

const ENTITIES = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' };
const escape = (text) =>
  String(text ?? '').replace(/[\x00-\x08\x0b\x0c\x0e-\x1f]/g, '').replace(/[&<>"]/g, (c) => ENTITIES[c]);

export default async function* junit(source) {
  const open = new Map();
  yield '<?xml version="1.0" encoding="utf-8"?>\n<testsuites>\n';
  for await (const { type, data } of source) {
    if (type === 'test:start') {
      const path = open.get(data.file) ?? [];
      path.length = data.nesting;
      path.push(data.name);
      open.set(data.file, path);
      continue;
    }
    if ((type !== 'test:pass' && type !== 'test:fail') || data.details?.type === 'suite') continue;
    const file = data.file ? relative(process.cwd(), data.file) : '';
    const suites = (open.get(data.file) ?? []).slice(0, data.nesting);
    const name = data.nesting === 0 && data.name === data.file ? file : [...suites, data.name].join(' > ');
    let body = '';
    if (data.skip !== undefined || data.todo !== undefined) {
      body = '<skipped/>';
    } else if (type === 'test:fail') {
      const error = data.details?.error;
      const cause = error?.cause ?? error;
      const text = cause?.stack ?? String(cause);
      body = `<failure message="${escape(cause?.message ?? 'failed')}">${escape(text)}</failure>`;
    }
    yield `<testcase classname="${escape(file)}" name="${escape(name)}">${body}</testcase>\n`;
  }
  yield '</testsuites>\n';
}
"""
