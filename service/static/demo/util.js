// Small helpers shared by the demo's views.

// "1 point", "3 points".
export const plural = (count, noun) => `${count.toLocaleString("en")} ${count === 1 ? noun : `${noun}s`}`;

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export function shuffled(items) {
  const out = [...items];
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [out[i], out[j]] = [out[j], out[i]];
  }
  return out;
}

// Tasks that run one at a time, in order (a click during a stream lands between two streamed
// posts); element.dataset.busy is "true" while any is queued or running. A task's error goes to
// onError. Returns enqueue(task).
export function serialQueue(element, onError) {
  let queue = Promise.resolve();
  let pending = 0;
  return (task) => {
    pending += 1;
    element.dataset.busy = "true";
    queue = queue
      .then(task)
      .catch(onError)
      .finally(() => {
        pending -= 1;
        if (pending === 0) element.dataset.busy = "false";
      });
    return queue;
  };
}
