// Scores results of the HTTP caching tests (the cache-tests project, npm
// `http-cache-tests`) the way cache-tests.fyi shows them, for a shared cache: every test
// that is not for browsers only, each classified as the project's display does
// (dependencies honoured).
//
//   node score.mjs SUITE_DIR RESULTS.json [more results.json ...]
//
// prints one JSON line per results file: its name, the counts by class, and
// `passed`/`total` — tests passed (required and optimal ones, and "check" tests
// answered yes) of all the shared-cache tests.
import fs from 'fs'
import path from 'path'
import { pathToFileURL } from 'url'

const [suiteDir, ...files] = process.argv.slice(2)
const load = (rel) => import(pathToFileURL(path.join(suiteDir, rel)).href)
const tests = (await load('tests/index.mjs')).default
const surrogate = (await load('tests/surrogate-control.mjs')).default
const suites = [...tests]
// The command-line runner adds the Surrogate-Control suite; shared caches run it too.
if (!suites.includes(surrogate)) suites.push(surrogate)

const byId = new Map()
for (const suite of suites) for (const test of suite.tests) byId.set(test.id, test)

function classify (id, results, seen = new Set()) {
  const test = byId.get(id)
  const result = results[id]
  if (result === undefined) return 'untested'
  if (test.depends_on && !seen.has(id)) {
    seen.add(id)
    for (const dep of test.depends_on) {
      if (!['pass', 'yes'].includes(classify(dep, results, seen))) return 'dependency_fail'
    }
  }
  if (result[0] === 'Setup') return result[1] === 'retry' ? 'retry' : 'setup_fail'
  const kind = test.kind || 'required'
  if (kind === 'check') return result === true ? 'yes' : 'no'
  if (result === true) return 'pass'
  return kind === 'optimal' ? 'optional_fail' : 'fail'
}

for (const file of files) {
  const results = JSON.parse(fs.readFileSync(file, 'utf8'))
  const counts = {}
  const failed = []
  let total = 0
  for (const [id, test] of byId) {
    if (test.browser_only) continue
    total++
    const cls = classify(id, results)
    counts[cls] = (counts[cls] || 0) + 1
    if (cls === 'fail') failed.push(id)
  }
  const passed = (counts.pass || 0) + (counts.yes || 0)
  console.log(JSON.stringify({ name: path.basename(file, '.json'), passed, total, counts, failed }))
}
