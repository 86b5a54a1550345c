// Building the page's DOM from API data: elements and SVG nodes whose text is always set with
// text nodes (never HTML), shared by the list (app.js) and the overview (overview.js).

const SVG_NS = "http://www.w3.org/2000/svg";

/** Builds an element: h("td", {class: "num"}, "42", child, ...). Strings become text. */
export function h(tag, attrs = {}, ...children) {
  return build(document.createElement(tag), attrs, children);
}

export function svg(tag, attrs = {}, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

function build(node, attrs, children) {
  for (const [name, value] of Object.entries(attrs)) {
    if (value !== null && value !== undefined && value !== false) {
      node.setAttribute(name, value === true ? "" : String(value));
    }
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined && child !== false) {
      node.append(typeof child === "string" ? document.createTextNode(child) : child);
    }
  }
  return node;
}
