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
