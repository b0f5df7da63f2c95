// The action's post step (after the job's last step, even when one failed): end the job's task.
require('./run')('post');
