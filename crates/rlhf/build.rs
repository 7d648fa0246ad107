fn main() {
    forja_buildhash::emit();
}
