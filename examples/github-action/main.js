// The action's main step: install the pinned ephemera release, exchange the job's ID token.
require('./run')('main');
