// Every form with data-confirm asks before it is sent: an operator's action changes what users get.
document.addEventListener("submit", (event) => {
  const question = event.target.dataset && event.target.dataset.confirm;
  if (question && !window.confirm(question)) event.preventDefault();
});

// Keyboard shortcuts on the review page: a key clicks the button marked data-key, or focuses the
// field marked data-focus-key; never while typing in a field (except Ctrl+Enter, which sends it).
document.addEventListener("keydown", (event) => {
  const field = event.target.closest && event.target.closest("input, textarea, select");
  if (field) {
    if (event.key === "Enter" && event.ctrlKey && field.form) field.form.requestSubmit(field.form.querySelector("[name=action][value=correct]") || undefined);
    if (field.tagName !== "SELECT") return;
  }
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const button = document.querySelector(`[data-key="${CSS.escape(event.key)}"]`);
  if (button) { event.preventDefault(); button.click(); return; }
  const target = document.querySelector(`[data-focus-key="${CSS.escape(event.key)}"]`);
  if (target && !field) { event.preventDefault(); target.focus(); }
});

// A correction beside its original, as a word diff that follows the typing. Built with text nodes
// only: nothing the answer or the reviewer wrote is ever parsed as HTML.
function wordDiff(before, after) {
  const a = before.split(/\s+/).filter(Boolean), b = after.split(/\s+/).filter(Boolean);
  const rows = a.length + 1, cols = b.length + 1, common = new Array(rows * cols).fill(0);
  for (let i = a.length - 1; i >= 0; i--)
    for (let j = b.length - 1; j >= 0; j--)
      common[i * cols + j] = a[i] === b[j] ? common[(i + 1) * cols + j + 1] + 1
        : Math.max(common[(i + 1) * cols + j], common[i * cols + j + 1]);
  const parts = [];
  let i = 0, j = 0;
  while (i < a.length || j < b.length) {
    if (i < a.length && j < b.length && a[i] === b[j]) { parts.push(["same", a[i]]); i++; j++; }
    else if (j < b.length && (i === a.length || common[i * cols + j + 1] >= common[(i + 1) * cols + j])) { parts.push(["ins", b[j]]); j++; }
    else { parts.push(["del", a[i]]); i++; }
  }
  return parts;
}

function original(id) {  // the answer's text, kept in a <template> beside the form
  return [...document.querySelectorAll("template")]
    .map((t) => t.content.querySelector(`[data-for="${CSS.escape(id)}"]`)).find(Boolean);
}

function showChanges(area) {
  const target = document.getElementById(area.dataset.diffTarget);
  const chooser = area.form.querySelector("[data-originals]");
  const id = chooser ? chooser.value : area.form.querySelector("[name=response_id]").value;
  const source = original(id);
  if (!target || !source) return;
  target.replaceChildren(...wordDiff(source.textContent, area.value).flatMap(([kind, word]) => {
    const node = kind === "same" ? document.createTextNode(word) : document.createElement(kind);
    if (kind !== "same") node.textContent = word;
    return [node, document.createTextNode(" ")];
  }));
}

document.querySelectorAll("[data-diff-target]").forEach((area) => {
  area.addEventListener("input", () => showChanges(area));
  const chooser = area.form.querySelector("[data-originals]");
  if (chooser) chooser.addEventListener("change", () => {
    const source = original(chooser.value);
    if (source) area.value = source.textContent;
    showChanges(area);
  });
  showChanges(area);
});
