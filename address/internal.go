package address

// Postfix keeps an address in two forms (global/quote_822_local.c): the
// external form as written in mail, with the local part quoted where RFC
// 5322 needs it ("a b"@x), and the internal form that Postfix's rewriting and
// table lookups work on, with the local part unquoted (a b@x). These two
// functions convert between them, so a package that follows Postfix's
// rewriting (expand) shares this package's reading of a local part.

// LocalText returns the local part in Postfix's internal form: the string
// it stands for, quotes and quoted pairs removed, case kept.
func (a Addr) LocalText() string { return unquoteLocal(a.Local) }

// FromText returns the Addr whose local part stands for local (internal
// form): local as it is when it is a dot-atom, else one quoted string, as
// Postfix's quote_822_local writes it. a.LocalText() == local.
func FromText(local, domain string) Addr {
	return Addr{Local: quoteLocal(local), Domain: domain}
}
