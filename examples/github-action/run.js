// Runs ephemera-action.sh (all of the action's logic, in bash) for one of the action's steps, with
// the step's environment (the INPUT_* variables, the GITHUB_* files, STATE_* in the post step) and
// its output going to the job's log; exits with the script's status. Node's built-ins only.
'use strict';
const { spawnSync } = require('node:child_process');
const path = require('node:path');

module.exports = function run(step) {
  const script = path.join(__dirname, 'ephemera-action.sh');
  const r = spawnSync('bash', [script, step], { stdio: 'inherit' });
  if (r.error) {
    console.log(`::error::cannot run bash ${script}: ${r.error.message}`);
    process.exit(1);
  }
  if (r.status === null) {
    console.log(`::error::${script} ${step} was killed by ${r.signal}`);
    process.exit(1);
  }
  process.exit(r.status);
};
