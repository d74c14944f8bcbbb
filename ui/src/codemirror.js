// The parts of CodeMirror 6 the flow editor uses, bundled into one script that sets
// `window.TiercelCodeMirror` (api/static/js/editor.js reads it): no bundler at run time.
export { basicSetup, EditorView } from "codemirror";
export { Compartment, EditorState } from "@codemirror/state";
export { keymap } from "@codemirror/view";
export { yaml } from "@codemirror/lang-yaml";
export { linter, lintGutter, setDiagnostics, forceLinting } from "@codemirror/lint";
export {
  autocompletion,
  completionStatus,
  startCompletion,
  acceptCompletion,
} from "@codemirror/autocomplete";
export { syntaxTree } from "@codemirror/language";
export { oneDark } from "@codemirror/theme-one-dark";
