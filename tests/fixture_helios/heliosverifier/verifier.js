// The ballot verifier checks encrypted ballots in the browser.
var VERIFIER = { ready: true };
